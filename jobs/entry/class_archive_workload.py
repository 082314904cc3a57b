"""The class archive's workload (``taxi class-archive``): a small synthetic month through ingest, validate and
features in one driver JVM that dumps the classes it loaded when it exits (see :mod:`jobs.platform.class_archive`).

Run as ``python -m jobs.entry.class_archive_workload <archive> <scratch dir>``; prints the JVM's pid last.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from jobs.platform.class_archive import dump_options

WORKLOAD_MONTH = "2023-01"
WORKLOAD_ROWS = 3000


def workload(partial: Path, scratch: Path) -> int:
    """The child process: a synthetic month through ingest, validate and features in one driver JVM; returns the
    JVM's pid (it writes the archive when it exits, after this process)."""
    from jobs.features import job as features
    from jobs.ingest import job as ingest
    from jobs.ingest import synth
    from jobs.platform.config import load_settings
    from jobs.platform.spark import get_spark
    from jobs.validation import job as validate

    settings = load_settings()
    settings.data.allowed_roots = [*settings.data.allowed_roots, scratch]
    raw = synth.run(settings, "green", WORKLOAD_MONTH, WORKLOAD_ROWS, out=str(scratch / "raw" / "green.parquet"))
    spark = get_spark(settings, app_name="taxi-class-archive", extra_conf=dump_options(partial))
    jvm_pid = spark.sparkContext._jvm.ProcessHandle.current().pid()
    ingest.run(spark, settings, "green", WORKLOAD_MONTH, source=raw["path"])
    validate.run(spark, settings, "green", WORKLOAD_MONTH)
    features.run(spark, settings, "green", WORKLOAD_MONTH)
    spark.stop()
    return int(jvm_pid)


if __name__ == "__main__":
    print(json.dumps({"jvm_pid": workload(Path(sys.argv[1]), Path(sys.argv[2]))}))
