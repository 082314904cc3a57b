"""``taxi promote``: move the champion alias behind the gate, or roll it back."""

from __future__ import annotations

from jobs.platform.arguments import add_version_or, with_spark


def promote(settings, args):
    from jobs.promotion import job

    return with_spark(settings, args.command, lambda s: job.run(s, settings, args.service, args.version, args.rollback))


def register(commands) -> None:
    p = commands.add_parser(
        "promote",
        help="move the 'champion' alias to a registered version, or back to the previous champion",
        description="Compares the version with the champion on the newest feature month neither has seen (or on "
        "their recorded validation RMSE), logs that gate report to MLflow, then moves the alias.",
    )
    add_version_or(
        p, "the registered version to make champion", "--rollback", "return to the champion before the current one"
    )
    p.set_defaults(func=promote)
