"""``taxi train``: candidates on a window of feature months, tracked in MLflow, registered behind the gate."""

from __future__ import annotations

from jobs.platform.arguments import add_service, month_or_latest, non_negative, positive_minutes, with_spark


def train(settings, args):
    from jobs.training import job

    if args.tune is not None or args.tune_minutes is not None:  # the flags override train.tune for this run
        settings = settings.model_copy(deep=True)
        settings.train.tune.trials = args.tune if args.tune is not None else settings.train.tune.trials
        settings.train.tune.minutes = args.tune_minutes or settings.train.tune.minutes
    options = (args.months, args.force, args.allow_stale)
    return with_spark(settings, args.command, lambda s: job.run(s, settings, args.service, args.until, *options))


def register(commands) -> None:
    p = commands.add_parser(
        "train",
        help="train XGBoost and LightGBM on Spark, log to MLflow, promote the best if it beats the champion",
        description="Trains on the feature months up to --until (the last month present validates), logs "
        "baselines, scratch and warm-started candidates to MLflow, registers the best one and moves the "
        "'champion' alias only if it beats the current champion on the same validation month. A window whose "
        "validation month the champion has already seen registers nothing (exit 0).",
    )
    add_service(p)
    p.add_argument(
        "--until",
        required=True,
        type=month_or_latest,
        help="last month of the window, YYYY-MM, or 'latest' (the newest month in silver/features)",
    )
    p.add_argument("--months", type=int, help="window length in months (default: train.months)")
    p.add_argument(
        "--force",
        action="store_true",
        help="train and register even when the champion has already seen the validation month (the gate is then "
        "not out-of-sample for the champion; the gate report says so)",
    )
    p.add_argument(
        "--allow-stale",
        action="store_true",
        help="train even when a month's features were built from validated data that has been re-validated since "
        "(by default such a window is refused, naming the `taxi features` runs that refresh it)",
    )
    p.add_argument(
        "--tune",
        type=non_negative,
        metavar="N",
        help="search each learner's hyperparameters (train.tune.space) with N Optuna trials first, stopping early "
        "on the last training month; the best become a '<learner>-tuned' candidate in the gate "
        "(default: train.tune.trials)",
    )
    p.add_argument(
        "--tune-minutes",
        type=positive_minutes,
        metavar="M",
        help="time budget per learner for --tune (a started trial finishes); alone, trials run until it ends",
    )
    p.set_defaults(func=train)
