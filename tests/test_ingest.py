"""Ingest: every real schema generation lands in one bronze schema; reruns, IDs, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from jobs.entry.cli import main
from jobs.ingest import job as ingest
from jobs.platform import lakehouse
from jobs.platform.schema import BRONZE_COLUMNS, TRIP_COLUMNS

from .conftest import DATA, ROOT, partition_rows, table_checksum, table_version

DEFAULT_TIER = "integration"  # tests without a tier marker of their own

EXPECTED_DTYPES = BRONZE_COLUMNS

GENERATIONS = {
    # (service, month, file): what makes the release different
    "green-2022-double-ids": ("green", "2022-01", DATA / "green/green_tripdata_2022-01.parquet"),
    "green-2023-int-ids": ("green", "2023-02", DATA / "green/green_tripdata_2023-02.parquet"),
    "yellow-2019-sample": ("yellow", "2019-03", DATA / "yellow/yellow_tripdata_2019-03.parquet"),
    "yellow-2025-Airport_fee-cbd": (
        "yellow",
        "2025-02",
        DATA / "yellow/yellow_tripdata_2025-02.sample.parquet",
    ),
    "yellow-2021-original-csv": (
        "yellow",
        "2021-01",
        DATA / "yellow-original-csv/yellow_tripdata_2021-01.csv",
    ),
}


def _bronze_month(spark, settings, service, month):
    return lakehouse.read(spark, settings, lakehouse.BRONZE).where(lakehouse.partition_predicate(service, month))


def _raw_pandas(path):
    if path.suffix == ".csv":
        return pd.read_csv(path)
    df = pq.read_table(path).to_pandas()
    return df


@pytest.mark.parametrize("generation", list(GENERATIONS))
def test_every_schema_generation_lands_in_the_same_bronze_schema(spark, empty_lake, generation):
    service, month, path = GENERATIONS[generation]
    summary = ingest.run(spark, empty_lake, service, month, str(path))
    raw = _raw_pandas(path)
    bronze = _bronze_month(spark, empty_lake, service, month)

    assert [(f.name, f.dataType.simpleString()) for f in bronze.schema.fields] == EXPECTED_DTYPES
    assert summary["rows"] == len(raw) == bronze.count()
    pdf = bronze.toPandas()
    # Values survive the type changes: sums of IDs and distances equal the raw file's.
    assert pdf["PULocationID"].sum() == raw["PULocationID"].sum()
    assert pdf["trip_distance"].sum() == pytest.approx(raw["trip_distance"].sum())
    assert pdf["passenger_count"].notna().sum() == raw["passenger_count"].notna().sum()
    assert pdf["cast_errors"].map(len).sum() == 0  # real files parse completely
    if generation == "yellow-2025-Airport_fee-cbd":
        assert pdf["airport_fee"].notna().sum() == raw["Airport_fee"].notna().sum() > 0
        assert pdf["cbd_congestion_fee"].sum() == pytest.approx(raw["cbd_congestion_fee"].sum())
        assert 7 in set(pdf["VendorID"])
    if generation == "yellow-2021-original-csv":
        # ".20" in the CSV is 0.2 miles; timestamps keep their wall-clock value (no time-zone shift).
        row = pdf[pdf["pickup_datetime"] == pd.Timestamp("2021-01-01 00:51:20")].iloc[0]
        assert row["trip_distance"] == pytest.approx(0.2) and row["total_amount"] == pytest.approx(4.3)
    if generation == "green-2022-double-ids":
        assert pdf["ehail_fee"].isna().all()


def test_rerun_replaces_the_partition_and_keeps_trip_ids(spark, lake):
    before = _bronze_month(spark, lake, "green", "2023-01").select("trip_id").toPandas()
    other_month = table_checksum_of(lake, "2023-02")
    again = ingest.run(spark, lake, "green", "2023-01")
    after = _bronze_month(spark, lake, "green", "2023-01").select("trip_id").toPandas()
    assert again["rows"] == len(before) == len(after) == 68211
    assert set(before["trip_id"]) == set(after["trip_id"])
    assert after["trip_id"].is_unique
    assert table_checksum_of(lake, "2023-02") == other_month  # other months untouched by the rerun


def table_checksum_of(settings, month):
    return table_checksum(lakehouse.BRONZE.path(settings), "green", month)


@pytest.mark.spark
def test_trip_id_is_unique_even_for_identical_rows(spark):
    from datetime import datetime

    from pyspark.sql import functions as F

    from jobs.ingest.job import add_trip_id

    t = datetime(2023, 1, 1, 10)
    rows = [(1, t, t, 5.0)] * 3 + [(2, t, t, 5.0)]
    df = spark.createDataFrame(
        rows, "VendorID int, pickup_datetime timestamp, dropoff_datetime timestamp, trip_distance double"
    )
    for name, typ in TRIP_COLUMNS:
        if name not in df.columns:
            df = df.withColumn(name, F.lit(None).cast(typ))
    ids = [r.trip_id for r in add_trip_id(df, "green", "2023-01").collect()]
    ids_again = [r.trip_id for r in add_trip_id(df.repartition(3), "green", "2023-01").collect()]
    assert len(set(ids)) == 4 and set(ids) == set(ids_again)
    assert all(len(i) == 32 for i in ids)


def test_bronze_reads_with_deltalake_without_spark(golden):
    dt = DeltaTable(lakehouse.BRONZE.path(golden.settings))
    assert dt.metadata().partition_columns == ["service", "month"]
    pdf = partition_rows(golden.settings, lakehouse.BRONZE, "green", "2023-02")
    assert len(pdf) == 64809 and pdf["trip_id"].is_unique


def test_raw_zone_keeps_the_file_and_its_checksum(golden):
    import hashlib

    landed = ingest.landed_file(golden.settings, "green", "2023-02")
    assert Path(landed.path).parent == golden.settings.raw_dir / "green" / "2023-02"
    digest = hashlib.sha256(open(landed.path, "rb").read()).hexdigest()
    assert landed.checksum == digest
    assert digest == hashlib.sha256((DATA / "green/green_tripdata_2023-02.parquet").read_bytes()).hexdigest()
    assert open(landed.path + ".sha256").read().split()[0] == digest


# ---- bad input: one clear line, non-zero exit, bronze unchanged ---------------------------------------------------
def _bad_files(tmp_path):
    good = DATA / "green/green_tripdata_2023-02.parquet"
    truncated = tmp_path / "green_tripdata_2023-02.parquet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    other = tmp_path / "zones.csv"
    shutil.copy(DATA.parent / "zones/zone_lookup.csv", other)
    binary = tmp_path / "image.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 10)
    return {
        "truncated": (truncated, "truncated parquet"),
        "empty": (empty, "is empty"),
        "non-tlc-csv": (other, "not a TLC trip file: missing column(s) pickup_datetime"),
        "other-format": (binary, "neither parquet nor"),
        "missing": (tmp_path / "nope.parquet", "source file not found"),
        "outside-roots": ("/etc/hostname", "outside the allowed roots"),
        "wrong-month": (good, "looks like another month's file"),
        # A yellow file landed as green: refused at once, naming the columns that gave it away.
        "wrong-service": (
            DATA / "yellow" / "yellow_tripdata_2019-03.parquet",
            "is a yellow taxi file, not green: column(s) tpep_pickup_datetime, tpep_dropoff_datetime",
        ),
    }


@pytest.mark.parametrize(
    "case",
    ["truncated", "empty", "non-tlc-csv", "other-format", "missing", "outside-roots", "wrong-month", "wrong-service"],
)
def test_bad_input_fails_clearly_and_changes_nothing(lake, cli_lakehouse, tmp_path, capsys, case):
    cli_lakehouse(lake)
    source, message = _bad_files(tmp_path)[case]
    month = "2023-03" if case == "wrong-month" else "2023-02"
    version = table_version(lake, lakehouse.BRONZE)
    raw_before = sorted(p.name for p in (lake.raw_dir / "green" / "2023-02").iterdir())

    rc = main(["ingest", "--service", "green", "--month", month, "--source", str(source)])

    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("taxi ingest: error: ") and message in err[-1]
    assert f"green {month}: " in err[-1]  # the service and month the file was meant for
    assert table_version(lake, lakehouse.BRONZE) == version
    assert sorted(p.name for p in (lake.raw_dir / "green" / "2023-02").iterdir()) == raw_before
    assert not (lake.raw_dir / "green" / "2023-03").exists()
    assert not list((lake.raw_dir / "_staging").glob("*"))


@pytest.mark.unit
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--month", "2023-13"], "invalid month"),
        (["--month", "../x"], "invalid month"),
        (["--service", "blue"], "unknown service 'blue'"),
    ],
)
def test_bad_arguments_exit_2_with_usage(argv, message, capsys):
    args = {"--service": "green", "--month": "2023-01"}
    args.update(dict(zip(argv[::2], argv[1::2], strict=True)))
    with pytest.raises(SystemExit) as exc:
        main(["ingest", *[x for kv in args.items() for x in kv]])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: taxi ingest") and message in err


@pytest.mark.unit
def test_every_command_and_option_is_documented_in_the_readme():
    """The README is the manual: every subcommand and every one of its options appears in it."""
    import argparse

    from jobs.entry.cli import parser as build_parser

    readme = (ROOT / "README.md").read_text()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, parser in sub.choices.items():
        if f"taxi {name}" not in readme:
            missing.append(f"taxi {name}")
        for action in parser._actions:
            missing += [
                f"taxi {name} {o}"
                for o in action.option_strings
                if o.startswith("--") and o != "--help" and o not in readme
            ]
    assert missing == []
