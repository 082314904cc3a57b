"""``taxi features``: a month's features into silver/features."""

from __future__ import annotations

from jobs.platform.arguments import add_service_month, with_spark


def features(settings, args):
    from jobs.features import job

    return with_spark(settings, args.command, lambda s: job.run(s, settings, args.service, args.month))


def register(commands) -> None:
    p = commands.add_parser(
        "features",
        help="write a month's features to silver/features (history from earlier months only)",
        description="Reads the month's validated trips (silver/trips) and, for the history features, the "
        "features.history_months months before it; replaces the month's partition of silver/features.",
    )
    add_service_month(p)
    p.set_defaults(func=features)
