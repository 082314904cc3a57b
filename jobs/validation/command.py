"""``taxi validate``: the Great Expectations suites on a landed month."""

from __future__ import annotations

from jobs.platform.arguments import add_service_month, with_spark


def validate(settings, args):
    from jobs.validation import job

    return with_spark(settings, args.command, lambda s: job.run(s, settings, args.service, args.month))


def register(commands) -> None:
    p = commands.add_parser(
        "validate",
        help="run the GX suites on a month: valid rows to silver/trips, failing rows to quarantine/trips",
        description="Runs expectations/<service>_file.json on the landed file and <service>_rows.json on the "
        "month's bronze rows. A rejected month exits 3 with the reason and writes nothing downstream. Every run "
        "appends to monitoring/validation_runs and refreshes the Data Docs under <lakehouse>/reports/validation.",
    )
    add_service_month(p)
    p.set_defaults(func=validate)
