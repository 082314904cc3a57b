"""``taxi score`` and ``taxi shadow``: batch scoring with a registered model, and the challenger scored beside it."""

from __future__ import annotations

from jobs.platform.arguments import add_service_month, add_version_or, with_spark


def score(settings, args):
    from jobs.scoring import job

    return with_spark(
        settings,
        args.command,
        lambda s: job.run(
            s, settings, args.service, args.month, args.model_alias, args.model_version, args.skip_if_no_model
        ),
    )


def shadow(settings, args):
    from jobs.scoring import shadow

    return shadow.run(settings, args.service, args.version, args.stop)


def register(commands) -> None:
    p = commands.add_parser(
        "score",
        help="score a month's validated trips with a registered model into gold/predictions",
        description="Loads the model from the MLflow registry (by alias, default 'champion', or by version), "
        "predicts every trip of the month's features in Arrow batches and replaces the month's partition.",
    )
    add_service_month(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model-alias", help="registry alias to score with (default: score.model_alias)")
    which.add_argument("--model-version", type=int, help="registry version number to score with")
    p.add_argument(
        "--skip-if-no-model",
        action="store_true",
        help="exit 0 without scoring when the registry has no such model yet (first months of a backfill)",
    )
    p.set_defaults(func=score)

    p = commands.add_parser(
        "shadow",
        help="score a registered version in shadow beside the champion (alias 'challenger'), or stop",
        description="From now on every `taxi score` with the champion also scores the month with this version into "
        "gold/shadow_predictions (same trips; BI tools read gold/predictions, which holds only the champion's rows), "
        "and the weekly monitor compares both on the same trips.",
    )
    add_version_or(
        p,
        "the registered version to score in shadow (not the champion)",
        "--stop",
        "remove the challenger: no more shadow scoring",
    )
    p.set_defaults(func=shadow)
