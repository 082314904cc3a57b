"""The commands that span stages or set up a deployment: ``run-month``, ``demo``, ``class-archive`` and
``airflow-init``."""

from __future__ import annotations

import sys

from jobs.ingest.command import SOURCE_HELP
from jobs.platform.arguments import add_service_month, with_spark
from jobs.platform.errors import TaxiError

CLASS_ARCHIVE_WORKLOAD = "jobs.entry.class_archive_workload"


def run_month(settings, args):
    from jobs.features import job as features
    from jobs.ingest import job as ingest
    from jobs.scoring import job as score
    from jobs.validation import job as validate

    def go(spark):
        steps = {
            "ingest": ingest.run(spark, settings, args.service, args.month, args.source),
            "validate": validate.run(spark, settings, args.service, args.month),
            "features": features.run(spark, settings, args.service, args.month),
        }
        if not args.skip_score:
            steps["score"] = score.run(spark, settings, args.service, args.month)
        return steps

    return with_spark(settings, args.command, go)


def demo(settings, args):
    from jobs.entry import demo

    return with_spark(settings, args.command, lambda s: demo.run(s, settings))


def class_archive(settings, args):
    from jobs.platform.class_archive import build, driver_java_options

    if settings.spark.class_archive:
        build(settings, CLASS_ARCHIVE_WORKLOAD, rebuild=args.rebuild)
    print(driver_java_options(settings))
    return None


def airflow_init(settings, args):
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
    pool_help = "spark-submit tasks of the taxi DAGs: Spark jobs at once on this deployment"
    commands.append([airflow, "pools", "set", cfg.spark_pool, str(slots), pool_help])
    for command in commands:
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode != 0:
            raise TaxiError(f"airflow-init: `airflow {' '.join(command[1:3])}` failed: {out.stderr.strip()[-2000:]}")
    return {"pool": cfg.spark_pool, "slots": slots, "migrated": not args.skip_migrate}


def register(commands) -> None:
    p = commands.add_parser("run-month", help="ingest -> validate -> features -> score for one month")
    add_service_month(p)
    p.add_argument("--source", help=SOURCE_HELP)
    p.add_argument("--skip-score", action="store_true", help="stop after features (no model needed)")
    p.set_defaults(func=run_month)

    p = commands.add_parser(
        "class-archive",
        help="archive the classes a Spark driver loads (JVM CDS) and print the driver options that map them",
        description="Runs a small synthetic month through ingest, validate and features in a driver JVM that dumps "
        "the classes it loaded into spark.jar_cache; every later driver (get_spark, and the Airflow tasks through "
        "the taxi_driver_java_options variable) maps them instead of loading them: short jobs start faster. "
        "Prints the options, followed by spark.driver_java_options (only those when spark.class_archive is false). "
        "Builds once; --rebuild dumps it again.",
    )
    p.add_argument("--rebuild", action="store_true", help="dump the archive again even if it exists")
    p.set_defaults(func=class_archive)

    p = commands.add_parser(
        "airflow-init",
        help="migrate Airflow's metadata database and create the Spark pool the DAGs' tasks run in",
        description="Runs `airflow db migrate`, then `airflow pools set <airflow.spark_pool> <slots>`: every "
        "spark-submit task takes a slot, so a backfill queues instead of starting more Spark drivers than the host "
        "or cluster takes. Run it once per Airflow deployment, and again to change the slots.",
    )
    p.add_argument("--slots", type=int, help="pool slots (default: airflow.spark_pool_slots, 1 in conf/local.yaml)")
    p.add_argument("--skip-migrate", action="store_true", help="only create or resize the pool")
    p.set_defaults(func=airflow_init)

    p = commands.add_parser("demo", help="run the whole pipeline on the shipped sample months")
    p.set_defaults(func=demo)
