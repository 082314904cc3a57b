"""The one Spark session factory used by every job, the CLI and the tests.

Delta and SynapseML ship no JARs in their wheels. The first session resolves the Maven coordinates in
``spark.packages`` with Spark's own Ivy resolver into ``spark.jar_cache``; a manifest then lists the resolved
JARs, and every later session (and ``spark-submit --jars $(taxi jars)``) uses them offline.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from .config import Settings

log = logging.getLogger("taxi.spark")

DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def _manifest(cache: Path) -> Path:
    return cache / "manifest.json"


def cached_jars(settings: Settings) -> list[str] | None:
    """Resolved JAR paths if the cache holds exactly the configured packages, else None."""
    path = _manifest(settings.spark.jar_cache)
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    jars = manifest.get("jars", [])
    if manifest.get("packages") != settings.spark.packages or not all(Path(j).exists() for j in jars):
        return None
    return jars


def _record_resolved(settings: Settings) -> list[str]:
    ivy_jars = settings.spark.jar_cache / "ivy" / "jars"
    jars = sorted(str(p) for p in ivy_jars.glob("*.jar"))
    _manifest(settings.spark.jar_cache).write_text(
        json.dumps({"packages": settings.spark.packages, "jars": jars}, indent=1)
    )
    log.info("resolved %d JARs for %s into %s", len(jars), settings.spark.packages, ivy_jars)
    return jars


def free_task_slots(spark) -> int:
    """Task slots available to barrier stages (local[N] threads, or the cluster's executor cores)."""
    sc = spark.sparkContext
    master = sc.master
    if master.startswith("local"):
        inner = master[master.find("[") + 1 : master.find("]")] if "[" in master else "1"
        inner = inner.split(",")[0]
        return (os.cpu_count() or 1) if inner == "*" else int(inner)
    executors = sc._jsc.sc().getExecutorMemoryStatus().size() - 1  # minus the driver
    cores = int(sc.getConf().get("spark.executor.cores", "1"))
    return max(1, executors * cores) if executors > 0 else sc.defaultParallelism


def executor_cores(spark) -> int:
    """Cores of one executor: all local[N] threads in local mode (the driver is the only executor)."""
    if spark.sparkContext.master.startswith("local"):
        return free_task_slots(spark)
    return int(spark.sparkContext.getConf().get("spark.executor.cores", "1"))


def get_spark(settings: Settings, app_name: str | None = None, extra_conf: dict[str, str] | None = None):
    """Return the active session or build one from the settings (master, JARs, Delta catalog, conf)."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    # Executors must run the venv's interpreter, or they miss its packages (barrier stages then fail).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

    builder = SparkSession.builder.master(settings.spark.master).appName(app_name or settings.spark.app_name)
    jars = cached_jars(settings)
    if jars:
        builder = builder.config("spark.jars", ",".join(jars))
    elif settings.spark.packages:
        settings.spark.jar_cache.mkdir(parents=True, exist_ok=True)
        log.info("resolving %s from Maven (once; cached in %s)", settings.spark.packages, settings.spark.jar_cache)
        builder = builder.config("spark.jars.packages", ",".join(settings.spark.packages)).config(
            "spark.jars.ivy", str(settings.spark.jar_cache / "ivy")
        )
    warehouse = settings.lakehouse / "_catalog"
    conf = {
        **DELTA_CONF,
        "spark.sql.warehouse.dir": str(warehouse),
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={warehouse}",
        **settings.spark.conf,
        **(extra_conf or {}),
    }
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    if not jars and settings.spark.packages:
        _record_resolved(settings)
    return spark


def ensure_jars(settings: Settings) -> list[str]:
    """Resolve the configured packages into the cache (starting a short local session if needed)."""
    jars = cached_jars(settings)
    if jars:
        return jars
    local = settings.model_copy(deep=True)
    local.spark.master = "local[1]"
    spark = get_spark(local, app_name="taxi-resolve-jars", extra_conf={"spark.ui.enabled": "false"})
    spark.stop()
    return cached_jars(settings) or []
