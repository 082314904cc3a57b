"""``taxi``: one command-line entry point, a subcommand per job. Airflow and spark-submit run this same code.

Each job: parse args -> load config -> build the Spark session -> the job's ``run`` -> a one-line JSON summary
on stdout. Errors a user can act on print one line on stderr and exit non-zero (see :mod:`jobs.errors`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from .config import SERVICES, ConfigError, Settings, load_settings
from .errors import InputError, TaxiError
from .log import setup_logging
from .months import check_month, check_service, check_week

EXIT_DOC = """exit codes: 0 ok; 2 bad input or arguments; 3 month rejected by validation;
4 an upstream stage is missing; 5 a service (MLflow) unreachable;
10 monitor: drift or error over threshold (retrain); 1 anything else."""


def _service(v: str) -> str:
    try:
        return check_service(v)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _month(v: str) -> str:
    try:
        return check_month(v)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _week(v: str) -> str:
    try:
        return check_week(v)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _service_month(p: argparse.ArgumentParser, month_help: str = "the month, YYYY-MM") -> None:
    p.add_argument("--service", required=True, type=_service, help=f"taxi service: {' or '.join(SERVICES)}")
    p.add_argument("--month", required=True, type=_month, help=month_help)


# ---- job launchers: heavy imports happen here, not at parse time ---------------------------------------------
def _with_spark(settings: Settings, args, fn: Callable) -> dict:
    """Run ``fn`` with a session; stop it afterwards only if this call created it (tests, notebooks share one)."""
    from pyspark.sql import SparkSession

    from .spark import get_spark

    owned = SparkSession.getActiveSession() is None
    spark = get_spark(settings, app_name=f"taxi-{args.command}")
    try:
        return fn(spark)
    finally:
        if owned:
            spark.stop()


def cmd_ingest(settings, args):
    from . import ingest

    return _with_spark(settings, args, lambda s: ingest.run(s, settings, args.service, args.month, args.source))


def cmd_validate(settings, args):
    from . import validate

    return _with_spark(settings, args, lambda s: validate.run(s, settings, args.service, args.month))


def cmd_features(settings, args):
    from . import features

    return _with_spark(settings, args, lambda s: features.run(s, settings, args.service, args.month))


def cmd_jars(settings, args):
    from .spark import ensure_jars

    jars = ensure_jars(settings)
    print(",".join(jars))
    return None


def cmd_sql(settings, args):
    from . import lakehouse

    def go(spark):
        names = lakehouse.register_tables(spark, settings)
        if not args.query:
            print("\n".join(names))
            return None
        spark.sql(args.query).show(args.limit, truncate=False)
        return None

    return _with_spark(settings, args, go)


def cmd_synth(settings, args):
    from . import synth

    return synth.run(settings, args.service, args.month, args.rows, args.out, args.seed)


def cmd_demo(settings, args):
    from . import demo

    return _with_spark(settings, args, lambda s: demo.run(s, settings))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taxi",
        description="NYC taxi trip-duration pipeline: Spark jobs over a Delta lakehouse, tracked in MLflow.",
        epilog=EXIT_DOC + "\nconfig: conf/local.yaml; override with TAXI_CONF=file.yaml, TAXI_LAKEHOUSE, "
        "MLFLOW_TRACKING_URI and TAXI__SECTION__KEY=value.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--conf", help="YAML file merged over conf/local.yaml (default: $TAXI_CONF)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ingest", help="land a monthly TLC file and write all its rows to bronze/trips")
    _service_month(p)
    p.add_argument(
        "--source",
        help="path, file:// or http(s) URL of the monthly file (parquet or the original CSV); default: the "
        "shipped sample for that month if any, else the TLC's public URL",
    )
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser(
        "validate",
        help="run the GX suites on a month: valid rows to silver/trips, failing rows to quarantine/trips",
        description="Runs expectations/<service>_file.json on the landed file and <service>_rows.json on the "
        "month's bronze rows. A rejected month exits 3 with the reason and writes nothing downstream. Every run "
        "appends to monitoring/validation_runs and refreshes the Data Docs under <lakehouse>/reports/validation.",
    )
    _service_month(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "features",
        help="write a month's features to silver/features (history from earlier months only)",
        description="Reads the month's validated trips (silver/trips) and, for the history features, the "
        "features.history_months months before it; replaces the month's partition of silver/features.",
    )
    _service_month(p)
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("synth", help="write a synthetic raw month in the real TLC schema (for benchmarks)")
    _service_month(p)
    p.add_argument("--rows", type=int, default=250_000, help="rows to generate (default 250000)")
    p.add_argument("--out", help="output parquet path (default: <lakehouse>/synth/<service>_tripdata_<month>.parquet)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("jars", help="resolve the Delta/SynapseML JARs into the cache and print them (for --jars)")
    p.set_defaults(func=cmd_jars)

    p = sub.add_parser("sql", help="register every lakehouse table as taxi.<name> and run a Spark SQL query")
    p.add_argument("query", nargs="?", help="SQL to run; without it, list the registered tables")
    p.add_argument("--limit", type=int, default=50, help="rows to show (default 50)")
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("demo", help="run the whole pipeline on the shipped sample months")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        settings = load_settings(conf_file=args.conf)
        summary = args.func(settings, args)
    except ConfigError as e:
        print(f"taxi {args.command}: error: {e}", file=sys.stderr)
        return 2
    except TaxiError as e:
        print(f"taxi {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception:
        logging.getLogger("taxi").exception("taxi %s failed", args.command)
        return 1
    if summary is not None:
        print(json.dumps({"command": args.command, **summary}, default=str))
    return int(summary.get("exit_code", 0)) if isinstance(summary, dict) else 0


if __name__ == "__main__":
    sys.exit(main())
