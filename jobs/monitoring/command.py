"""``taxi monitor``: weekly drift and accuracy of the model that scored the week."""

from __future__ import annotations

from jobs.platform.arguments import add_service, week, with_spark


def monitor(settings, args):
    from jobs.monitoring import job

    if args.metrics:
        from jobs.monitoring import metric_tables
        from jobs.platform.lakehouse import new_run_id

        return with_spark(
            settings, args.command, lambda s: metric_tables.fill(s, settings, args.service, new_run_id("metrics"))
        )
    if args.pending:
        return with_spark(settings, args.command, lambda s: job.run_pending(s, settings, args.service, args.exit_code))
    return with_spark(settings, args.command, lambda s: job.run(s, settings, args.service, args.week, args.exit_code))


def register(commands) -> None:
    p = commands.add_parser(
        "monitor",
        help="weekly drift (PSI, JS, KS, Wasserstein) and accuracy of the scoring model; retrain flag",
        description="Compares the week's scored trips with the reference profile of the model version that "
        "scored them (its out-of-sample validation month); writes "
        "monitoring/drift, an MLflow run with an HTML report, and <lakehouse>/reports/drift/<service>/<week>.json "
        "whose 'retrain' flag the Airflow DAG branches on.",
    )
    add_service(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--week", type=week, help="ISO week, YYYY-Www (e.g. 2023-W06)")
    which.add_argument(
        "--pending",
        action="store_true",
        help="every complete ISO week of the scored months without a report yet, oldest first (a week spanning "
        "two months waits for both); nothing pending exits 0",
    )
    which.add_argument(
        "--metrics",
        action="store_true",
        help="fill the metric tables (monitoring/accuracy_metrics, profile_metrics) for every week already reported "
        "and its months, and rebuild the service page (after an upgrade, or after changing monitor.slices); each "
        "monitor run writes its own week's rows",
    )
    p.add_argument("--exit-code", action="store_true", help="exit 10 when drift or error calls for retraining")
    p.set_defaults(func=monitor)
