"""What every command shares: the argument types (service, month, week, counts), declared once, and running a
job with a Spark session. Each stage registers its own subcommands (``<stage>/command.py``) with these."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from jobs.platform.config import SERVICES, Settings
from jobs.platform.errors import InputError
from jobs.platform.months import check_month, check_service, check_week


def _checked(check: Callable[[str], str]) -> Callable[[str], str]:
    """An argparse type from one of the months module's checks: its error becomes the usage error."""

    def parse(value: str) -> str:
        try:
            return check(value)
        except InputError as e:
            raise argparse.ArgumentTypeError(str(e)) from e

    parse.__name__ = check.__name__.removeprefix("check_")
    return parse


service = _checked(check_service)
month = _checked(check_month)
week = _checked(check_week)


def month_or_latest(value: str) -> str:
    return value if value == "latest" else month(value)


def non_negative(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value!r}")
    return int(value)


def positive_minutes(value: str) -> float:
    try:
        minutes = float(value)
    except ValueError:
        minutes = 0.0
    if not minutes > 0:
        raise argparse.ArgumentTypeError(f"expected minutes > 0, got {value!r}")
    return minutes


def add_service(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--service", required=True, type=service, help=f"taxi service: {' or '.join(SERVICES)}")


def add_service_month(parser: argparse.ArgumentParser, month_help: str = "the month, YYYY-MM") -> None:
    add_service(parser)
    parser.add_argument("--month", required=True, type=month, help=month_help)


def add_version_or(parser: argparse.ArgumentParser, version_help: str, flag: str, flag_help: str) -> None:
    """``--service`` and either ``--version N`` or ``flag``: the registry-alias commands."""
    add_service(parser)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", type=int, help=version_help)
    which.add_argument(flag, action="store_true", help=flag_help)


def add_month_job(commands, name: str, job_module: str, help: str, description: str) -> None:
    """``taxi <name> --service S --month M``: ``<job_module>.run(spark, settings, service, month)`` with a session
    (the job imported when the command runs, not when the parser is built)."""

    def handler(settings: Settings, args) -> dict | None:
        import importlib

        job = importlib.import_module(job_module)
        return with_spark(settings, args.command, lambda s: job.run(s, settings, args.service, args.month))

    parser = commands.add_parser(name, help=help, description=description)
    add_service_month(parser)
    parser.set_defaults(func=handler)


def with_spark(settings: Settings, command: str, job: Callable) -> dict | None:
    """Run ``job(spark)`` with a session; stop it afterwards only if this call created it (tests and notebooks
    share one)."""
    from pyspark.sql import SparkSession

    from jobs.platform.spark import get_spark

    owned = SparkSession.getActiveSession() is None
    spark = get_spark(settings, app_name=f"taxi-{command}")
    try:
        return job(spark)
    finally:
        if owned:
            spark.stop()
