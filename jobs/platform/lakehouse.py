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

from jobs.platform import sql, storage
from jobs.platform.config import Settings
from jobs.platform.errors import InputError, MissingUpstream

log = logging.getLogger("taxi.lakehouse")


@dataclass(frozen=True)
class Table:
    key: str  # catalog name: taxi.<key>
    relpath: str  # under the lakehouse root
    partition_by: tuple[str, ...] = ("service", "month")
    producer: str = ""  # the command that writes it, for error messages

    def location(self, settings: Settings):
        return settings.lakehouse / self.relpath

    def path(self, settings: Settings) -> str:
        """The table's URI as Spark and delta-rs take it (a local path or s3a://...)."""
        return str(self.location(settings))


BRONZE = Table("bronze_trips", "bronze/trips", producer="taxi ingest")
TRIPS = Table("trips", "silver/trips", producer="taxi validate")
QUARANTINE = Table("quarantine_trips", "quarantine/trips", producer="taxi validate")
VALIDATION_RUNS = Table("validation_runs", "monitoring/validation_runs", ("service",), "taxi validate")
FEATURES = Table("features", "silver/features", producer="taxi features")
PREDICTIONS = Table("predictions", "gold/predictions", producer="taxi score")
# The challenger's scores of the same trips (taxi shadow), apart from what BI reads.
SHADOW_PREDICTIONS = Table("shadow_predictions", "gold/shadow_predictions", producer="taxi score (with taxi shadow)")
DRIFT = Table("drift", "monitoring/drift", ("service",), "taxi monitor")
# What `taxi backtest` measured: one row per (replayed range, month, policy, metric).
BACKTEST = Table("backtest", "monitoring/backtest", ("service",), "taxi backtest")
# Accuracy per window (ISO week or month) x slice x model version: what dashboards chart over time and segments.
ACCURACY_METRICS = Table("accuracy_metrics", "monitoring/accuracy_metrics", ("service",), "taxi monitor")
# Per window x slice x model version x column: count, null share, mean, quantiles, distinct count.
PROFILE_METRICS = Table("profile_metrics", "monitoring/profile_metrics", ("service",), "taxi monitor")
# Per window x slice x model version x column x baseline (reference, previous window): PSI, JS, KS, Wasserstein.
DRIFT_METRICS = Table("drift_metrics", "monitoring/drift_metrics", ("service",), "taxi monitor")
ALL_TABLES = (
    BRONZE,
    TRIPS,
    QUARANTINE,
    VALIDATION_RUNS,
    FEATURES,
    PREDICTIONS,
    SHADOW_PREDICTIONS,
    DRIFT,
    BACKTEST,
    ACCURACY_METRICS,
    PROFILE_METRICS,
    DRIFT_METRICS,
)
CATALOG_DB = "taxi"


def new_run_id(stage: str) -> str:
    return f"{stage}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"


def exists(settings: Settings, table: Table) -> bool:
    return storage.exists(table.location(settings) / "_delta_log")


def delta_rs(settings: Settings, table: Table, version: int | None = None):
    """The table through delta-rs (no JVM: sensors, decisions, lineage), local or on object storage."""
    return storage.delta_table(table.location(settings), **({} if version is None else {"version": version}))


def query(
    settings: Settings,
    table: Table,
    columns: list[str] | None = None,
    filters: list[tuple[str, str, object]] | None = None,
    version: int | None = None,
):
    """Rows of a table as pandas, without a JVM: ``filters`` are ``(column, "=" | "in", value)`` conjunctions.

    Through delta-rs's own query engine (DataFusion) rather than its pyarrow dataset, whose object-store reads
    leave threads that abort the interpreter at exit.
    """
    import pyarrow as pa
    from deltalake import QueryBuilder

    where = []
    for column, op, value in filters or []:
        if op == "=":
            where.append(f'"{column}" = {sql.ansi_literal(value)}')
        elif op == "in":
            where.append(f'"{column}" IN ({", ".join(sql.ansi_literal(v) for v in value)})' if value else "false")
        else:
            raise ValueError(f"unsupported filter operator {op!r}")
    select = ", ".join(f'"{c}"' for c in columns) if columns else "*"
    statement = f"SELECT {select} FROM t" + (f" WHERE {' AND '.join(where)}" if where else "")
    reader = QueryBuilder().register("t", delta_rs(settings, table, version)).execute(statement)
    table = pa.table(reader.read_all())  # an Arrow C stream (arro3) -> pyarrow
    # DataFusion answers with string views, which pandas cannot take inside lists: plain strings instead.
    plain = pa.schema([f.with_type(_without_views(f.type)) for f in table.schema])
    return table.cast(plain).to_pandas()


def _without_views(kind):
    import pyarrow as pa

    if pa.types.is_string_view(kind):
        return pa.string()
    if pa.types.is_binary_view(kind):
        return pa.binary()
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_list_view(kind):
        return pa.list_(_without_views(kind.value_type))
    if pa.types.is_map(kind):
        return pa.map_(_without_views(kind.key_type), _without_views(kind.item_type))
    if pa.types.is_struct(kind):
        return pa.struct([f.with_type(_without_views(f.type)) for f in kind])
    return kind


def column_names(settings: Settings, table: Table) -> set[str]:
    return {f.name for f in delta_rs(settings, table).schema().fields}


def partition_predicate(service: str, month: str | None = None) -> str:
    return sql.matches(service=service) if month is None else sql.matches(service=service, month=month)


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


WALL_CLOCK = ("pickup_datetime", "dropoff_datetime")  # TIMESTAMP_NTZ since the wall-clock migration


def check_wall_clock(df, settings: Settings, table: Table) -> None:
    """Refuse to write wall-clock trip times into a table written before they were TIMESTAMP_NTZ, naming the fix."""
    if not any(c in df.columns for c in WALL_CLOCK) or not exists(settings, table):
        return
    stored = dict(df.sparkSession.read.format("delta").load(table.path(settings)).dtypes)
    old = [c for c in WALL_CLOCK if stored.get(c) == "timestamp"]
    if old:
        raise InputError(
            f"table {table.relpath} stores {', '.join(old)} as TIMESTAMP (an instant), from before "
            "trip times became wall-clock TIMESTAMP_NTZ: run `taxi migrate-timestamps` once"
        )


def migrate_wall_clock(spark, settings: Settings) -> dict[str, dict]:
    """Rewrite every table whose trip times are still TIMESTAMP as TIMESTAMP_NTZ (the same wall-clock values: the
    session zone is UTC, in which they were stored); returns {table: {version, columns}} for the tables changed.

    Per table: enable Delta's ``timestampNtz`` feature, then one overwrite commit with the new schema (time travel
    keeps the old version). Idempotent: a table already migrated, or killed between the two steps, is handled.
    """
    from pyspark.sql import functions as F

    run_id = new_run_id("migrate-timestamps")
    changed = {}
    for table in ALL_TABLES:
        if not exists(settings, table):
            continue
        df = read(spark, settings, table)
        old = [c for c, kind in df.dtypes if c in WALL_CLOCK and kind == "timestamp"]
        if not old:
            continue
        path = table.path(settings)
        spark.sql(f"ALTER TABLE {sql.delta_path(path)} SET TBLPROPERTIES ('delta.feature.timestampNtz' = 'supported')")
        migrated = df.select(*[F.col(c).cast("timestamp_ntz").alias(c) if c in old else F.col(c) for c in df.columns])
        # The whole table, so static overwrite (the session's dynamic mode cannot change a schema).
        writer = (
            migrated.write.format("delta")
            .mode("overwrite")
            .option("partitionOverwriteMode", "static")
            .option("overwriteSchema", "true")
            .option("userMetadata", run_id)
        )
        (writer.partitionBy(*table.partition_by) if table.partition_by else writer).save(path)
        changed[table.key] = {"version": version_written(spark, settings, table, run_id), "columns": old}
    return changed


def replace_where(df, settings: Settings, table: Table, run_id: str, predicate: str, merge_schema: bool = False) -> int:
    """Atomically replace the rows matching ``predicate`` with ``df``; returns the Delta version written.
    ``merge_schema`` lets a newer job add columns to a table an older one wrote."""
    check_wall_clock(df, settings, table)
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


def replace_partition(
    df, settings: Settings, table: Table, run_id: str, service: str, month: str, merge_schema: bool = False
) -> int:
    """Atomically replace one (service, month) partition with ``df``; returns the Delta version written."""
    return replace_where(df, settings, table, run_id, partition_predicate(service, month), merge_schema)


def append(df, settings: Settings, table: Table, run_id: str, merge_schema: bool = False) -> int:
    """Append rows as one commit (run logs, drift rows); returns the Delta version written. ``merge_schema`` lets
    a newer job add columns to a table an older one wrote."""
    check_wall_clock(df, settings, table)
    writer = (
        df.write.format("delta")
        .mode("append")
        .option("userMetadata", run_id)
        .option("mergeSchema", str(merge_schema).lower())
    )
    if table.partition_by:
        writer = writer.partitionBy(*table.partition_by)
    retry_on_conflict(
        lambda: writer.save(table.path(settings)),
        table.relpath,
        settings.writes.conflict_retries,
        settings.writes.conflict_backoff_s,
    )
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
            spark.sql(
                f"CREATE TABLE IF NOT EXISTS {CATALOG_DB}.{t.key} USING DELTA LOCATION {sql.literal(t.path(settings))}"
            )
            names.append(f"{CATALOG_DB}.{t.key}")
    return names
