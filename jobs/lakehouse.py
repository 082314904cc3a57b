"""The lakehouse layout and the only ways jobs write to it.

Every write is one Delta commit, so a job killed mid-write leaves the table at its previous version.
Monthly tables are rewritten one (service, month) partition at a time with ``replaceWhere``: reruns and
backfills replace exactly what they own and never duplicate rows. Each commit carries the job's run id in
its ``userMetadata``, which is how a job finds the exact version it wrote, even with concurrent writers.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .config import Settings
from .errors import MissingUpstream

log = logging.getLogger("taxi.lakehouse")


@dataclass(frozen=True)
class Table:
    key: str  # catalog name: taxi.<key>
    relpath: str  # under the lakehouse root
    partition_by: tuple[str, ...] = ("service", "month")
    producer: str = ""  # the command that writes it, for error messages

    def path(self, settings: Settings) -> str:
        return str(settings.lakehouse / self.relpath)


BRONZE = Table("bronze_trips", "bronze/trips", producer="taxi ingest")
TRIPS = Table("trips", "silver/trips", producer="taxi validate")
QUARANTINE = Table("quarantine_trips", "quarantine/trips", producer="taxi validate")
VALIDATION_RUNS = Table("validation_runs", "monitoring/validation_runs", ("service",), "taxi validate")
FEATURES = Table("features", "silver/features", producer="taxi features")
PREDICTIONS = Table("predictions", "gold/predictions", producer="taxi score")
# The challenger's scores of the same trips (taxi shadow), apart from what BI reads.
SHADOW_PREDICTIONS = Table("shadow_predictions", "gold/shadow_predictions", producer="taxi score (with taxi shadow)")
DRIFT = Table("drift", "monitoring/drift", ("service",), "taxi monitor")
ALL_TABLES = (BRONZE, TRIPS, QUARANTINE, VALIDATION_RUNS, FEATURES, PREDICTIONS, SHADOW_PREDICTIONS, DRIFT)
CATALOG_DB = "taxi"


def new_run_id(stage: str) -> str:
    return f"{stage}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"


def exists(settings: Settings, table: Table) -> bool:
    return (Path(table.path(settings)) / "_delta_log").is_dir()


def partition_predicate(service: str, month: str | None = None) -> str:
    # Both values are validated by the CLI (service from a fixed set, month as YYYY-MM) before they get here.
    pred = f"service = '{service}'"
    return pred if month is None else f"{pred} AND month = '{month}'"


def version_written(spark, settings: Settings, table: Table, run_id: str) -> int:
    """The Delta version whose commit carries ``run_id``."""
    from delta.tables import DeltaTable

    hist = DeltaTable.forPath(spark, table.path(settings)).history(50)
    rows = hist.filter(hist.userMetadata == run_id).select("version").collect()
    if not rows:
        raise RuntimeError(f"commit of run {run_id} not found in {table.relpath}")
    return int(max(r.version for r in rows))


def current_version(spark, settings: Settings, table: Table) -> int:
    from delta.tables import DeltaTable

    return int(DeltaTable.forPath(spark, table.path(settings)).history(1).collect()[0].version)


CONFLICTS = ("ConcurrentAppend", "ConcurrentDelete", "ConcurrentTransaction", "MetadataChanged", "ProtocolChanged")


def is_conflict(error: BaseException) -> bool:
    """Whether ``error`` is Delta telling a writer that another writer committed first."""
    return any(c in f"{type(error).__name__} {error}" for c in CONFLICTS)


def retry_on_conflict(write, what: str, retries: int, backoff_s: float) -> int:
    """Run a Delta write; when a concurrent writer wins the optimistic-concurrency race, retry it (bounded).

    A retried ``replaceWhere`` replaces the winner's rows again, so the partition ends with exactly one copy.
    Returns how many conflicts were retried; any other error, or a conflict on the last try, is raised.
    """
    for attempt in range(retries):
        try:
            write()
            return attempt
        except Exception as e:
            if not is_conflict(e) or attempt == retries - 1:
                raise
            log.warning("concurrent write to %s (attempt %d): %s; retrying", what, attempt + 1, type(e).__name__)
            time.sleep(backoff_s * 2**attempt + random.random() * min(1.0, backoff_s * 2))
    raise AssertionError("unreachable")


def replace_where(df, settings: Settings, table: Table, run_id: str, predicate: str, merge_schema: bool = False) -> int:
    """Atomically replace the rows matching ``predicate`` with ``df``; returns the Delta version written.
    ``merge_schema`` lets a newer job add columns to a table an older one wrote."""
    retry_on_conflict(
        lambda: (
            df.write.format("delta")
            .mode("overwrite")
            .option("replaceWhere", predicate)
            .option("mergeSchema", str(merge_schema).lower())
            .option("userMetadata", run_id)
            .partitionBy(*table.partition_by)
            .save(table.path(settings))
        ),
        f"{table.relpath} where {predicate}",
        settings.writes.conflict_retries,
        settings.writes.conflict_backoff_s,
    )
    return version_written(df.sparkSession, settings, table, run_id)


def replace_partition(df, settings: Settings, table: Table, run_id: str, service: str, month: str,
                      merge_schema: bool = False) -> int:  # fmt: skip
    """Atomically replace one (service, month) partition with ``df``; returns the Delta version written."""
    return replace_where(df, settings, table, run_id, partition_predicate(service, month), merge_schema)


def append(df, settings: Settings, table: Table, run_id: str, merge_schema: bool = False) -> int:
    """Append rows as one commit (run logs, drift rows); returns the Delta version written. ``merge_schema`` lets
    a newer job add columns to a table an older one wrote."""
    writer = (df.write.format("delta").mode("append").option("userMetadata", run_id)
              .option("mergeSchema", str(merge_schema).lower()))  # fmt: skip
    if table.partition_by:
        writer = writer.partitionBy(*table.partition_by)
    retry_on_conflict(lambda: writer.save(table.path(settings)), table.relpath, settings.writes.conflict_retries,
                      settings.writes.conflict_backoff_s)  # fmt: skip
    return version_written(df.sparkSession, settings, table, run_id)


def read(spark, settings: Settings, table: Table, version: int | None = None):
    if not exists(settings, table):
        raise MissingUpstream(f"table {table.relpath} does not exist yet: run `{table.producer}` first")
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(table.path(settings))


def read_partition(spark, settings: Settings, table: Table, service: str, month: str, stage_hint: str = ""):
    """Rows of one (service, month); a clear error naming the missing stage when there are none."""
    hint = stage_hint or table.producer
    if not exists(settings, table):
        raise MissingUpstream(
            f"{table.relpath} has no data for {service} {month}: run `{hint} --service {service} --month {month}` first"
        )
    df = read(spark, settings, table).where(partition_predicate(service, month))
    if df.limit(1).count() == 0:
        raise MissingUpstream(
            f"{table.relpath} has no data for {service} {month}: run `{hint} --service {service} --month {month}` first"
        )
    return df


def register_tables(spark, settings: Settings) -> list[str]:
    """Register every existing table in the Spark catalog as ``taxi.<key>`` (external Delta tables)."""
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {CATALOG_DB}")
    names = []
    for t in ALL_TABLES:
        if exists(settings, t):
            spark.sql(f"CREATE TABLE IF NOT EXISTS {CATALOG_DB}.{t.key} USING DELTA LOCATION '{t.path(settings)}'")
            names.append(f"{CATALOG_DB}.{t.key}")
    return names
