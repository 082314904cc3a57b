"""``taxi lineage``: the whole path of one prediction back to its raw file."""

from __future__ import annotations

from jobs.platform.config import SERVICES


def lineage(settings, args):
    from jobs.lineage import job

    found = job.trace(settings, args.service, args.trip_id, args.month)
    if args.json:
        return {"lineage": found}
    print(job.render(found))
    return None


def register(commands) -> None:
    p = commands.add_parser(
        "lineage",
        help="the whole path of one prediction: model version and its run, features row, validation run, bronze "
        "row, raw file and its sha256",
    )
    p.add_argument("--service", required=True, choices=SERVICES)
    p.add_argument("--trip-id", required=True, help="trip_id of a row in gold/predictions")
    p.add_argument("--month", help="the trip's month (YYYY-MM): reads one partition instead of the service's")
    p.add_argument("--json", action="store_true", help="print the lineage as JSON (the command's summary line)")
    p.set_defaults(func=lineage)
