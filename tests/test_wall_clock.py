"""Trip times are New York wall-clock times (TIMESTAMP_NTZ) from bronze to gold: no reader's, JVM's or machine's time
zone shifts them or the week and month boundaries the jobs compute; an older lakehouse is migrated by a command."""

from __future__ import annotations

import subprocess
import sys
import time

import pandas as pd
import pyarrow.parquet as pq
import pytest

from jobs.ingest import job as ingest
from jobs.platform import lakehouse

from .conftest import DATA, ROOT, table_checksum
from .processes import job_env

DEFAULT_TIER = "integration"  # tests without a tier marker of their own
NEW_YORK = "America/New_York"


def _sorted_times(values) -> list[str]:
    return sorted(pd.Series(values).dropna().astype("datetime64[us]").dt.strftime("%Y-%m-%d %H:%M:%S"))


def test_every_reader_shows_the_raw_files_wall_clock_times(golden):
    """pyarrow on the raw file, delta-rs and DuckDB (in New York time) on bronze and silver: the same times."""
    import duckdb

    s = golden.settings
    raw = pq.read_table(DATA / "green" / "green_tripdata_2023-02.parquet", columns=["lpep_pickup_datetime"])
    assert raw.schema.field(0).type.tz is None  # the TLC's own file: wall-clock times, no zone
    expected = _sorted_times(raw.column(0).to_pandas())
    for table in (lakehouse.BRONZE, lakehouse.TRIPS):
        field = next(f for f in lakehouse.delta_rs(s, table).schema().fields if f.name == "pickup_datetime")
        assert str(field.type.type) == "timestamp_ntz", (table.key, field.type)
    bronze = lakehouse.query(
        s, lakehouse.BRONZE, ["pickup_datetime"], [("service", "=", "green"), ("month", "=", "2023-02")]
    )
    assert _sorted_times(bronze["pickup_datetime"]) == expected  # every row, bad ones included
    con = duckdb.connect()
    con.execute(f"SET TimeZone = '{NEW_YORK}'")  # a BI session in New York: TIMESTAMP (without zone) stays as is
    con.register("trips", lakehouse.delta_rs(s, lakehouse.TRIPS).to_pyarrow_dataset())
    kind, first = con.execute(
        "select typeof(min(pickup_datetime)), min(pickup_datetime) from trips where month = '2023-02'"
    ).fetchone()
    valid = lakehouse.query(
        s, lakehouse.TRIPS, ["pickup_datetime"], [("service", "=", "green"), ("month", "=", "2023-02")]
    )
    assert kind == "TIMESTAMP" and first == valid["pickup_datetime"].min().to_pydatetime()
    assert first.strftime("%Y-%m-%d %H:%M:%S") in expected


def test_week_boundaries_do_not_move_with_the_machines_time_zone(spark, golden, monkeypatch):
    """The week's trips selected under a New York Python process equal those selected under UTC (a naive datetime
    literal would have moved the boundaries by five hours)."""
    from jobs.monitoring.weeks import scored_week

    def week_ids() -> set[str]:
        return {r.trip_id for r in scored_week(spark, golden.settings, "green", "2023-W06").select("trip_id").collect()}

    utc = week_ids()
    monkeypatch.setenv("TZ", NEW_YORK)
    time.tzset()
    try:
        assert time.strftime("%Z") in ("EST", "EDT")
        assert week_ids() == utc and len(utc) > 10_000
    finally:
        monkeypatch.setenv("TZ", "UTC")
        time.tzset()


@pytest.mark.slow
def test_months_processed_in_new_york_time_give_the_tables_utc_gives(golden, tmp_path):
    """Ingest, validate and features of two months with the JVM and Python in New York time: the same rows and
    values as the golden lakehouse built under UTC."""
    months = ("2022-01", "2022-02")
    script = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); import time; assert time.strftime('%Z') in "
        "('EST', 'EDT'); from jobs.features import job as features; from jobs.ingest import job as ingest; "
        "from jobs.validation import job as validate; from jobs.platform.config import load_settings; "
        "from jobs.platform.spark import get_spark; s = load_settings(); spark = get_spark(s); "
        "assert spark.sparkContext._jvm.java.util.TimeZone.getDefault().getID() == 'America/New_York'; "
        f"[(ingest.run(spark, s, 'green', m), validate.run(spark, s, 'green', m)) for m in {months!r}]; "
        f"features.run(spark, s, 'green', {months[-1]!r})"
    )
    lake = tmp_path / "lakehouse"
    env = job_env(lake, TZ=NEW_YORK, JAVA_TOOL_OPTIONS=f"-Duser.timezone={NEW_YORK}")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    for table, month in [(t, m) for t in (lakehouse.BRONZE, lakehouse.TRIPS, lakehouse.QUARANTINE) for m in months]:
        here = table_checksum(str(lake / table.relpath), "green", month)
        assert here == table_checksum(table.path(golden.settings), "green", month), (table.key, month)
    features = table_checksum(str(lake / lakehouse.FEATURES.relpath), "green", months[-1])
    assert features == table_checksum(lakehouse.FEATURES.path(golden.settings), "green", months[-1])


def test_a_lakehouse_from_before_wall_clock_times_is_refused_then_migrated(spark, lake):
    """Tables whose trip times are TIMESTAMP (as every lakehouse written before stored them): a job refuses to write,
    naming the command; `taxi migrate-timestamps` rewrites them with the same values, once."""
    from pyspark.sql import functions as F

    from jobs.platform.errors import InputError

    before = {
        t.key: table_checksum(t.path(lake), "green", "2023-02") for t in (lakehouse.BRONZE, lakehouse.PREDICTIONS)
    }
    for table in (lakehouse.BRONZE, lakehouse.PREDICTIONS):  # what the previous release wrote
        df = lakehouse.read(spark, lake, table)
        old = df.select(*[F.col(c).cast("timestamp").alias(c) if c in lakehouse.WALL_CLOCK else c for c in df.columns])
        writer = old.write.format("delta").mode("overwrite").option("partitionOverwriteMode", "static")
        writer.option("overwriteSchema", "true").partitionBy(*table.partition_by).save(table.path(lake))
    version = lakehouse.current_version(spark, lake, lakehouse.BRONZE)
    with pytest.raises(
        InputError,
        match=r"bronze/trips stores pickup_datetime, dropoff_datetime as TIMESTAMP .* "
        r"run `taxi migrate-timestamps`",
    ):
        ingest.run(spark, lake, "green", "2023-02")
    assert lakehouse.current_version(spark, lake, lakehouse.BRONZE) == version  # nothing written
    migrated = lakehouse.migrate_wall_clock(spark, lake)
    assert set(migrated) == {"bronze_trips", "predictions"}
    assert migrated["bronze_trips"]["columns"] == ["pickup_datetime", "dropoff_datetime"]
    for table in (lakehouse.BRONZE, lakehouse.PREDICTIONS):
        kinds = dict(lakehouse.read(spark, lake, table).dtypes)
        assert kinds["pickup_datetime"] == "timestamp_ntz", table.key
        assert table_checksum(table.path(lake), "green", "2023-02") == before[table.key]  # the same wall-clock times
    assert lakehouse.migrate_wall_clock(spark, lake) == {}  # once
    assert ingest.run(spark, lake, "green", "2023-02")["rows"] == before["bronze_trips"][0]
