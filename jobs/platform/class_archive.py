"""A class-data-sharing (CDS) archive for Spark driver JVMs: the classes a job loads, mapped from one file.

A short spark-submit spends much of its life loading, verifying and linking the same ~20,000 classes (Spark, Delta,
Parquet, Hadoop, Janino). `taxi class-archive` runs a small representative job once (a synthetic month through
ingest, validate and features) in a driver JVM that dumps the classes it loaded when it exits (JDK dynamic CDS,
``-XX:ArchiveClassesAtExit``); every later driver maps them (``-XX:SharedArchiveFile``) through the option string
``driver_java_options`` returns, which get_spark and the Airflow tasks pass as ``spark.driver.defaultJavaOptions``.

The archive is an optimisation, never a requirement: a JVM of another version or class path, or a missing file,
starts as before (``-Xshare:auto``, its CDS warnings off), and ``spark.class_archive: false`` turns it off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jobs.platform.cluster import alive
from jobs.platform.config import Settings
from jobs.platform.errors import TaxiError

# The JVM's CDS messages (an archive it cannot use, classes it skips while dumping) are not the job's business.
QUIET = "-Xshare:auto -Xlog:cds=off -Xlog:cds+dynamic=off"


def archive_path(settings: Settings) -> Path:
    """One archive per pyspark version (its JARs are the class path the archive was dumped with)."""
    from pyspark.version import __version__

    return settings.spark.jar_cache / f"driver-classes-pyspark-{__version__}.jsa"


def driver_java_options(settings: Settings) -> str:
    """The driver JVM options: those that map the archive (none when there is none or it is turned off), then the
    configured ``spark.driver_java_options``."""
    path = archive_path(settings)
    archive = f"-XX:SharedArchiveFile={path} {QUIET}" if settings.spark.class_archive and path.exists() else ""
    return " ".join(o for o in (archive, settings.spark.driver_java_options.strip()) if o)


def build(settings: Settings, workload: str, rebuild: bool = False, timeout_s: float = 900) -> Path:
    """Dump the archive (unless it exists and ``rebuild`` is false) and return its path.

    ``workload``: the module run as ``python -m <workload> <archive> <scratch dir>``; it drives one representative
    job in a driver JVM started with :func:`dump_options` and prints ``{"jvm_pid": ...}`` as its last line."""
    path = archive_path(settings)
    if path.exists() and not rebuild:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="taxi-class-archive-") as scratch:
        env = {**os.environ, "TAXI_LAKEHOUSE": str(Path(scratch) / "lakehouse")}
        out = subprocess.run(
            [sys.executable, "-m", workload, str(partial), scratch],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if out.returncode != 0:
            raise TaxiError(f"the class archive's workload failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
        # The JVM dumps the archive in its exit path, after the Python process that drove it has gone.
        printed = out.stdout.strip().splitlines()
        if not printed or not printed[-1].startswith("{"):
            raise TaxiError(f"the class archive's workload {workload} printed no JVM pid:\n{out.stderr[-3000:]}")
        jvm_pid = json.loads(printed[-1])["jvm_pid"]
        deadline = time.monotonic() + 300
        while alive(jvm_pid) and time.monotonic() < deadline:
            time.sleep(0.5)
    if not partial.exists():
        raise TaxiError(f"the driver JVM wrote no class archive ({partial}): is this Java 17 or later?")
    partial.replace(path)
    return path


def dump_options(partial: Path) -> dict[str, str]:
    """Spark conf for the workload's driver: dump the classes it loaded into ``partial`` when the JVM exits."""
    return {
        "spark.driver.defaultJavaOptions": f"-XX:ArchiveClassesAtExit={partial} {QUIET}",
        "spark.ui.enabled": "false",
    }
