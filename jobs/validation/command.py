"""``taxi validate``: the Great Expectations suites on a landed month."""

from __future__ import annotations

from jobs.platform.arguments import add_month_job


def register(commands) -> None:
    add_month_job(
        commands,
        "validate",
        "jobs.validation.job",
        help="run the GX suites on a month: valid rows to silver/trips, failing rows to quarantine/trips",
        description="Runs expectations/<service>_file.json on the landed file and <service>_rows.json on the "
        "month's bronze rows. A rejected month exits 3 with the reason and writes nothing downstream. Every run "
        "appends to monitoring/validation_runs and refreshes the Data Docs under <lakehouse>/reports/validation.",
    )
