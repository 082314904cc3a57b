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


def _non_negative(v: str) -> int:
    if not v.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {v!r}")
    return int(v)


def _positive_minutes(v: str) -> float:
    try:
        minutes = float(v)
    except ValueError:
        minutes = 0.0
    if not minutes > 0:
        raise argparse.ArgumentTypeError(f"expected minutes > 0, got {v!r}")
    return minutes


def _week(v: str) -> str:
    try:
        return check_week(v)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _service_month(p: argparse.ArgumentParser, month_help: str = "the month, YYYY-MM") -> None:
    p.add_argument("--service", required=True, type=_service, help=f"taxi service: {' or '.join(SERVICES)}")
    p.add_argument("--month", required=True, type=_month, help=month_help)


# ---- job launchers: heavy imports happen here, not at parse time ---------------------------------------------
def _version_or(p: argparse.ArgumentParser, version_help: str, flag: str, flag_help: str) -> None:
    """``--service`` and either ``--version N`` or ``flag``: the registry-alias commands."""
    p.add_argument("--service", required=True, type=_service, help=f"taxi service: {' or '.join(SERVICES)}")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", type=int, help=version_help)
    which.add_argument(flag, action="store_true", help=flag_help)


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


def cmd_train(settings, args):
    from . import train

    if args.tune is not None or args.tune_minutes is not None:  # the flags override train.tune for this run
        settings = settings.model_copy(deep=True)
        settings.train.tune.trials = args.tune if args.tune is not None else settings.train.tune.trials
        settings.train.tune.minutes = args.tune_minutes or settings.train.tune.minutes
    return _with_spark(
        settings,
        args,
        lambda s: train.run(s, settings, args.service, args.until, args.months, args.force, args.allow_stale),
    )


def cmd_promote(settings, args):
    from . import promote

    return _with_spark(settings, args, lambda s: promote.run(s, settings, args.service, args.version, args.rollback))


def cmd_shadow(settings, args):
    from . import shadow

    return shadow.run(settings, args.service, args.version, args.stop)


def cmd_score(settings, args):
    from . import score

    return _with_spark(
        settings,
        args,
        lambda s: score.run(
            s, settings, args.service, args.month, args.model_alias, args.model_version, args.skip_if_no_model
        ),
    )


def cmd_run_month(settings, args):
    from . import features, ingest, score, validate

    def go(spark):
        steps = {
            "ingest": ingest.run(spark, settings, args.service, args.month, args.source),
            "validate": validate.run(spark, settings, args.service, args.month),
            "features": features.run(spark, settings, args.service, args.month),
        }
        if not args.skip_score:
            steps["score"] = score.run(spark, settings, args.service, args.month)
        return steps

    return _with_spark(settings, args, go)


def cmd_monitor(settings, args):
    from . import monitor

    if args.pending:
        return _with_spark(settings, args, lambda s: monitor.run_pending(s, settings, args.service, args.exit_code))
    return _with_spark(settings, args, lambda s: monitor.run(s, settings, args.service, args.week, args.exit_code))


def cmd_cluster(settings, args):
    from . import cluster

    if args.action == "start":
        return cluster.start(args.workers, args.cores, args.memory)
    if args.action == "stop":
        return cluster.stop()
    return {"running": cluster.pids()}


def cmd_jars(settings, args):
    from .spark import ensure_jars, session_packages

    if args.object_store:  # whatever the lakehouse: an image built once serves local and object-store lakehouses
        spark_conf = settings.spark.model_copy(update={"packages": session_packages(settings, object_store=True)})
        settings = settings.model_copy(update={"spark": spark_conf})
    jars = ensure_jars(settings)
    print(",".join(jars))
    return None


def cmd_class_archive(settings, args):
    from .class_archive import build, driver_java_options

    if settings.spark.class_archive:
        build(settings, rebuild=args.rebuild)
    print(driver_java_options(settings))
    return None


def cmd_airflow_init(settings, args):
    """Prepare Airflow's metadata database for the DAGs: migrate it and create the Spark pool."""
    import shutil
    import subprocess
    from pathlib import Path

    airflow = shutil.which("airflow", path=str(Path(sys.executable).parent)) or shutil.which("airflow")
    if not airflow:
        raise TaxiError("airflow-init: the `airflow` command is not installed in this environment")
    cfg = settings.airflow
    slots = args.slots or cfg.spark_pool_slots
    commands = [] if args.skip_migrate else [[airflow, "db", "migrate"]]
    commands.append([airflow, "pools", "set", cfg.spark_pool, str(slots),
                     "spark-submit tasks of the taxi DAGs: Spark jobs at once on this deployment"])  # fmt: skip
    for command in commands:
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode != 0:
            raise TaxiError(f"airflow-init: `airflow {' '.join(command[1:3])}` failed: {out.stderr.strip()[-2000:]}")
    return {"pool": cfg.spark_pool, "slots": slots, "migrated": not args.skip_migrate}


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


def cmd_migrate_timestamps(settings, args):
    from . import lakehouse

    return _with_spark(settings, args, lambda s: {"migrated": lakehouse.migrate_wall_clock(s, settings)})


def cmd_lineage(settings, args):
    from . import lineage

    found = lineage.trace(settings, args.service, args.trip_id, args.month)
    if args.json:
        return {"lineage": found}
    print(lineage.render(found))
    return None


def cmd_sql_server(settings, args):
    from . import sql_server

    host = args.host or settings.sql_server.host
    port = args.port or settings.sql_server.port
    if args.action == "serve":
        sql_server.serve(settings, host, port)
        return None
    if args.action == "start":
        return sql_server.start(settings, host, port, settings.sql_server.start_timeout_s)
    if args.action == "stop":
        return sql_server.stop(port)
    return sql_server.status(host, port)


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

    p = sub.add_parser(
        "train",
        help="train XGBoost and LightGBM on Spark, log to MLflow, promote the best if it beats the champion",
        description="Trains on the feature months up to --until (the last month present validates), logs "
        "baselines, scratch and warm-started candidates to MLflow, registers the best one and moves the "
        "'champion' alias only if it beats the current champion on the same validation month. A window whose "
        "validation month the champion has already seen registers nothing (exit 0).",
    )
    p.add_argument("--service", required=True, type=_service, help=f"taxi service: {' or '.join(SERVICES)}")
    p.add_argument(
        "--until",
        required=True,
        type=lambda v: v if v == "latest" else _month(v),
        help="last month of the window, YYYY-MM, or 'latest' (the newest month in silver/features)",
    )
    p.add_argument("--months", type=int, help="window length in months (default: train.months)")
    p.add_argument(
        "--force",
        action="store_true",
        help="train and register even when the champion has already seen the validation month (the gate is then "
        "not out-of-sample for the champion; the gate report says so)",
    )
    p.add_argument(
        "--allow-stale",
        action="store_true",
        help="train even when a month's features were built from validated data that has been re-validated since "
        "(by default such a window is refused, naming the `taxi features` runs that refresh it)",
    )
    p.add_argument(
        "--tune",
        type=_non_negative,
        metavar="N",
        help="search each learner's hyperparameters (train.tune.space) with N Optuna trials first, stopping early "
        "on the last training month; the best become a '<learner>-tuned' candidate in the gate "
        "(default: train.tune.trials)",
    )
    p.add_argument(
        "--tune-minutes",
        type=_positive_minutes,
        metavar="M",
        help="time budget per learner for --tune (a started trial finishes); alone, trials run until it ends",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "promote",
        help="move the 'champion' alias to a registered version, or back to the previous champion",
        description="Compares the version with the champion on the newest feature month neither has seen (or on "
        "their recorded validation RMSE), logs that gate report to MLflow, then moves the alias.",
    )
    _version_or(p, "the registered version to make champion", "--rollback",
                "return to the champion before the current one")  # fmt: skip
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser(
        "shadow",
        help="score a registered version in shadow beside the champion (alias 'challenger'), or stop",
        description="From now on every `taxi score` with the champion also scores the month with this version into "
        "gold/shadow_predictions (same trips; BI tools read gold/predictions, which holds only the champion's rows), "
        "and the weekly monitor compares both on the same trips.",
    )
    _version_or(p, "the registered version to score in shadow (not the champion)", "--stop",
                "remove the challenger: no more shadow scoring")  # fmt: skip
    p.set_defaults(func=cmd_shadow)

    p = sub.add_parser(
        "score",
        help="score a month's validated trips with a registered model into gold/predictions",
        description="Loads the model from the MLflow registry (by alias, default 'champion', or by version), "
        "predicts every trip of the month's features in Arrow batches and replaces the month's partition.",
    )
    _service_month(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model-alias", help="registry alias to score with (default: score.model_alias)")
    which.add_argument("--model-version", type=int, help="registry version number to score with")
    p.add_argument(
        "--skip-if-no-model",
        action="store_true",
        help="exit 0 without scoring when the registry has no such model yet (first months of a backfill)",
    )
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("run-month", help="ingest -> validate -> features -> score for one month")
    _service_month(p)
    p.add_argument("--source", help="as for `taxi ingest --source`")
    p.add_argument("--skip-score", action="store_true", help="stop after features (no model needed)")
    p.set_defaults(func=cmd_run_month)

    p = sub.add_parser(
        "monitor",
        help="weekly drift (PSI, JS, KS, Wasserstein) and accuracy of the scoring model; retrain flag",
        description="Compares the week's scored trips with the reference profile of the model version that "
        "scored them (its out-of-sample validation month); writes "
        "monitoring/drift, an MLflow run with an HTML report, and <lakehouse>/reports/drift/<service>/<week>.json "
        "whose 'retrain' flag the Airflow DAG branches on.",
    )
    p.add_argument("--service", required=True, type=_service, help=f"taxi service: {' or '.join(SERVICES)}")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--week", type=_week, help="ISO week, YYYY-Www (e.g. 2023-W06)")
    which.add_argument(
        "--pending",
        action="store_true",
        help="every complete ISO week of the scored months without a report yet, oldest first (a week spanning "
        "two months waits for both); nothing pending exits 0",
    )
    p.add_argument("--exit-code", action="store_true", help="exit 10 when drift or error calls for retraining")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("synth", help="write a synthetic raw month in the real TLC schema (for benchmarks)")
    _service_month(p)
    p.add_argument("--rows", type=int, default=250_000, help="rows to generate (default 250000)")
    p.add_argument("--out", help="output parquet path (default: <lakehouse>/synth/<service>_tripdata_<month>.parquet)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser(
        "cluster",
        help="start/stop a local Spark standalone cluster (master + workers) from the installed pyspark",
        description="Starts spark://127.0.0.1:7077 with N workers as background processes (logs and pid files "
        "in .cache/cluster). Point jobs at it with TAXI__SPARK__MASTER=spark://127.0.0.1:7077.",
    )
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--workers", type=int, default=2, help="number of workers (default 2)")
    p.add_argument("--cores", type=int, default=1, help="cores per worker (default 1)")
    p.add_argument("--memory", default="2g", help="memory per worker (default 2g)")
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("jars", help="resolve the Delta/SynapseML JARs into the cache and print them (for --jars)")
    p.add_argument("--object-store", action="store_true",
                   help="add the S3 connector (spark.object_store_packages), as an s3a:// lakehouse does")  # fmt: skip
    p.set_defaults(func=cmd_jars)

    p = sub.add_parser(
        "class-archive",
        help="archive the classes a Spark driver loads (JVM CDS) and print the driver options that map them",
        description="Runs a small synthetic month through ingest, validate and features in a driver JVM that dumps "
        "the classes it loaded into spark.jar_cache; every later driver (get_spark, and the Airflow tasks through "
        "the taxi_driver_java_options variable) maps them instead of loading them: short jobs start faster. "
        "Prints the options, followed by spark.driver_java_options (only those when spark.class_archive is false). "
        "Builds once; --rebuild dumps it again.",
    )
    p.add_argument("--rebuild", action="store_true", help="dump the archive again even if it exists")
    p.set_defaults(func=cmd_class_archive)

    p = sub.add_parser(
        "airflow-init",
        help="migrate Airflow's metadata database and create the Spark pool the DAGs' tasks run in",
        description="Runs `airflow db migrate`, then `airflow pools set <airflow.spark_pool> <slots>`: every "
        "spark-submit task takes a slot, so a backfill queues instead of starting more Spark drivers than the host "
        "or cluster takes. Run it once per Airflow deployment, and again to change the slots.",
    )
    p.add_argument("--slots", type=int, help="pool slots (default: airflow.spark_pool_slots, 1 in conf/local.yaml)")
    p.add_argument("--skip-migrate", action="store_true", help="only create or resize the pool")
    p.set_defaults(func=cmd_airflow_init)

    p = sub.add_parser("sql", help="register every lakehouse table as taxi.<name> and run a Spark SQL query")
    p.add_argument("query", nargs="?", help="SQL to run; without it, list the registered tables")
    p.add_argument("--limit", type=int, default=50, help="rows to show (default 50)")
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser(
        "migrate-timestamps",
        help="once, for a lakehouse written before trip times became wall-clock: rewrite every table's "
        "pickup/dropoff times from TIMESTAMP to TIMESTAMP_NTZ (same values; time travel keeps the old version)",
    )
    p.set_defaults(func=cmd_migrate_timestamps)

    p = sub.add_parser(
        "lineage",
        help="the whole path of one prediction: model version and its run, features row, validation run, bronze "
        "row, raw file and its sha256",
    )
    p.add_argument("--service", required=True, choices=SERVICES)
    p.add_argument("--trip-id", required=True, help="trip_id of a row in gold/predictions")
    p.add_argument("--month", help="the trip's month (YYYY-MM): reads one partition instead of the service's")
    p.add_argument("--json", action="store_true", help="print the lineage as JSON (the command's summary line)")
    p.set_defaults(func=cmd_lineage)

    p = sub.add_parser(
        "sql-server",
        help="the SQL endpoint for BI tools: Spark's Thrift server (HiveServer2, JDBC/ODBC) over taxi.<name> views",
        description="start: launch the server through spark-submit in the background (views of every lakehouse "
        "table as taxi.<name>, refreshed at each start) and wait until it listens; stop; status; serve: the server "
        "in the foreground (what start runs). Binds to sql_server.host (127.0.0.1); any other address needs "
        "sql_server.authentication LDAP or CUSTOM.",
    )
    p.add_argument("action", choices=["start", "stop", "status", "serve"])
    p.add_argument("--port", type=int, help="port (default: sql_server.port, 10000)")
    p.add_argument("--host", help="address to bind (default: sql_server.host, 127.0.0.1)")
    p.set_defaults(func=cmd_sql_server)

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
