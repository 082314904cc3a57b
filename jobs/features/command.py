"""``taxi features``: a month's features into silver/features."""

from __future__ import annotations

from jobs.platform.arguments import add_month_job


def register(commands) -> None:
    add_month_job(
        commands,
        "features",
        "jobs.features.job",
        help="write a month's features to silver/features (history from earlier months only)",
        description="Reads the month's validated trips (silver/trips) and, for the history features, the "
        "features.history_months months before it; replaces the month's partition of silver/features.",
    )
