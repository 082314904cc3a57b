"""The one Spark session factory used by every job, the CLI and the tests.

Delta and SynapseML ship no JARs in their wheels. The first session resolves the Maven coordinates in
``spark.packages`` with Spark's own Ivy resolver into ``spark.jar_cache``; a manifest then lists the resolved
JARs, and every later session (and ``spark-submit --jars $(taxi jars)``) uses them offline.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import urllib.parse
from pathlib import Path

from jobs.platform import log_store, storage
from jobs.platform.class_archive import driver_java_options
from jobs.platform.config import Settings
from jobs.platform.errors import TaxiError
from jobs.platform.lease import file_lock
from jobs.platform.log import child_output_to_log_file, jvm_log_options

log = logging.getLogger("taxi.spark")

DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
# Not a setting: instants (ingested_at, scored_at, ...) are stored and shown in UTC, and a raw file's zone-aware
# timestamps become the trips' wall-clock times (TIMESTAMP_NTZ) through this zone, whatever the JVM's or the
# machine's zone is.
FIXED_CONF = {"spark.sql.session.timeZone": "UTC"}
RESOLVER_ENV = "TAXI_JAR_RESOLVER"  # set for the child process that resolves the JARs (see _resolve_in_child)


def session_packages(settings: Settings, object_store: bool | None = None) -> list[str]:
    """Maven packages this lakehouse needs: the configured ones, plus the S3 connector for an object store."""
    if object_store is None:
        object_store = storage.is_remote(settings.lakehouse)
    extra = [p for p in settings.spark.object_store_packages if p not in settings.spark.packages]
    return [*settings.spark.packages, *(extra if object_store else [])]


def _manifest(settings: Settings, packages: list[str]) -> Path:
    # One manifest per package set: a local and an object-store lakehouse share the Ivy cache, not the JAR list.
    digest = hashlib.blake2b("\n".join(packages).encode(), digest_size=6).hexdigest()
    return settings.spark.jar_cache / f"manifest-{digest}.json"


def cached_jars(settings: Settings) -> list[str] | None:
    """Resolved JAR paths if the cache holds exactly the packages this lakehouse needs, else None."""
    packages = session_packages(settings)
    path = _manifest(settings, packages)
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    jars = manifest.get("jars", [])
    if manifest.get("packages") != packages or not all(Path(j).exists() for j in jars):
        return None
    return jars


def _record_resolved(settings: Settings, spark) -> list[str]:
    packages = session_packages(settings)
    # What Ivy resolved for exactly these packages (spark-submit lists them in spark.jars), not all its cache holds.
    resolved = spark.sparkContext.getConf().get("spark.jars", "")
    jars = sorted(urllib.parse.urlparse(j).path for j in resolved.split(",") if j)
    _manifest(settings, packages).write_text(json.dumps({"packages": packages, "jars": jars}, indent=1))
    log.info("resolved %d JARs for %s into %s", len(jars), packages, settings.spark.jar_cache / "ivy" / "jars")
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

    log_store.check_writers(settings)
    builder = SparkSession.builder.master(settings.spark.master).appName(app_name or settings.spark.app_name)
    packages = session_packages(settings)
    jars = cached_jars(settings)
    if jars is None and packages and not _is_resolver():
        jars = _resolve_in_child(settings)  # so this JVM starts with every JAR (and the log store's) on its class path
    if jars:
        builder = builder.config("spark.jars", ",".join(with_log_store(settings, jars)))
    elif packages:  # the resolving child: Ivy fetches the packages into the cache while the session starts
        settings.spark.jar_cache.mkdir(parents=True, exist_ok=True)
        log.info("resolving %s from Maven (once; cached in %s)", packages, settings.spark.jar_cache)
        builder = builder.config("spark.jars.packages", ",".join(packages)).config(
            "spark.jars.ivy", str(settings.spark.jar_cache / "ivy")
        )
    warehouse = settings.catalog_dir
    driver_options = driver_java_options(settings)
    conf = {
        **DELTA_CONF,
        **({"spark.driver.defaultJavaOptions": driver_options} if driver_options else {}),
        **(storage.spark_conf() if storage.is_remote(settings.lakehouse) else {}),
        **log_store.spark_conf(settings),
        "spark.sql.warehouse.dir": str(warehouse),
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={warehouse} {jvm_log_options()}",
        **settings.spark.conf,
        **(extra_conf or {}),
        **FIXED_CONF,
    }
    for key, value in conf.items():
        builder = builder.config(key, value)
    # What the JVM and its Python workers print (Ivy's report while resolving JARs, the JVM's log, the learners'
    # native output) goes to the log file when there is one; the job's errors still reach the terminal through its
    # own error line.
    with child_output_to_log_file():
        spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    if not jars and packages:
        _record_resolved(settings, spark)
    return spark


def with_log_store(settings: Settings, jars: list[str], object_store: bool | None = None) -> list[str]:
    """The Maven JARs, plus the many-writer Delta log store's JAR where an object-store lakehouse uses it."""
    if not log_store.uses_dynamodb(settings, object_store):
        return jars
    return [*jars, log_store.ensure_jar(settings, jars)]


def _is_resolver() -> bool:
    return os.environ.get(RESOLVER_ENV) == "1"


def _resolve(settings: Settings) -> list[str]:
    """Resolve the configured packages into the cache: in a child process, unless this is that child."""
    return _resolve_here(settings) if _is_resolver() else _resolve_in_child(settings)


def _resolve_here(settings: Settings) -> list[str]:
    """The child's work: a short local session that opens no table (so it needs no log store of its own)."""
    local = settings.model_copy(deep=True)
    local.spark.master = "local[1]"
    local.writes.s3_log_store = "single-driver"
    local.airflow.spark_pool_slots = 1
    spark = get_spark(local, app_name="taxi-resolve-jars", extra_conf={"spark.ui.enabled": "false"})
    spark.stop()
    return cached_jars(settings) or []


def _resolve_in_child(settings: Settings) -> list[str]:
    """Resolve the JARs (and compile the log store) in a short child process, one process per cache at a time.

    A child, because a JVM puts JARs on the driver's class path only when it starts, and a running session must not
    be stopped for it. A lock, because drivers starting at once on a cold host (parallel Airflow tasks, the writers
    of bench/concurrent_writers.py) would otherwise run Ivy on one cache together, and Ivy's cache is not safe for
    that: the losers' JVMs die before the session starts."""
    import subprocess

    cache = settings.spark.jar_cache
    with file_lock(cache / "resolve.lock"):
        jars = cached_jars(settings)  # another driver may have resolved them while this one waited
        if jars is not None:
            return jars
        env = {**os.environ, "TAXI_LAKEHOUSE": str(settings.lakehouse), "TAXI__SPARK__JAR_CACHE": str(cache)}
        code = (
            "import json, sys; from jobs.platform.config import load_settings; "
            "from jobs.platform.spark import ensure_jars; settings = load_settings(); "
            "settings.spark.packages = json.loads(sys.argv[1]); ensure_jars(settings)"
        )
        cmd = [sys.executable, "-c", code, json.dumps(settings.spark.packages)]
        with child_output_to_log_file():
            out = subprocess.run(cmd, env={**env, RESOLVER_ENV: "1"}, capture_output=True, text=True)
        if out.returncode != 0:
            raise TaxiError(f"resolving the JARs of {session_packages(settings)} failed: {out.stderr.strip()[-2000:]}")
        return cached_jars(settings) or []


def ensure_jars(settings: Settings, object_store: bool | None = None) -> list[str]:
    """Every JAR a session of this lakehouse (or of an object-store one) loads, resolved into the cache first if
    needed: what `taxi jars` prints for spark-submit --jars."""
    if object_store:  # whatever the lakehouse: an image built once serves local and object-store lakehouses
        spark_conf = settings.spark.model_copy(update={"packages": session_packages(settings, object_store=True)})
        settings = settings.model_copy(update={"spark": spark_conf})
    return with_log_store(settings, cached_jars(settings) or _resolve(settings), object_store)
