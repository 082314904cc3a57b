"""``taxi ingest`` and ``taxi synth``: land a monthly TLC file; write a synthetic one."""

from __future__ import annotations

from jobs.platform.arguments import add_service_month, with_spark

SOURCE_HELP = (
    "path, file:// or http(s) URL of the monthly file (parquet or the original CSV); default: the shipped sample "
    "for that month if any, else the TLC's public URL"
)


def ingest(settings, args):
    from jobs.ingest import job

    return with_spark(settings, args.command, lambda s: job.run(s, settings, args.service, args.month, args.source))


def synth(settings, args):
    from jobs.ingest import synth

    return synth.run(settings, args.service, args.month, args.rows, args.out, args.seed)


def register(commands) -> None:
    p = commands.add_parser("ingest", help="land a monthly TLC file and write all its rows to bronze/trips")
    add_service_month(p)
    p.add_argument("--source", help=SOURCE_HELP)
    p.set_defaults(func=ingest)

    p = commands.add_parser("synth", help="write a synthetic raw month in the real TLC schema (for benchmarks)")
    add_service_month(p)
    p.add_argument("--rows", type=int, default=250_000, help="rows to generate (default 250000)")
    p.add_argument("--out", help="output parquet path (default: <lakehouse>/synth/<service>_tripdata_<month>.parquet)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.set_defaults(func=synth)
