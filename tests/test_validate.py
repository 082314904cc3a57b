"""Validation: GX counts equal an independent pandas count, quarantine is lossless, bad schemas reject a month."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from jobs import ingest, lakehouse, validate
from jobs.cli import main
from jobs.errors import MonthRejected

from .conftest import DATA, GOLDEN_GREEN, table_version

DEFAULT_TIER = "integration"  # tests without a tier marker of their own


def _pandas_rule_counts(path, month: str, service: str) -> dict[str, int]:
    """Each rule computed independently, in plain pandas, on the TLC file as published."""
    raw = pd.read_parquet(path)
    p = "lpep_" if service == "green" else "tpep_"
    pu, do = raw[f"{p}pickup_datetime"], raw[f"{p}dropoff_datetime"]
    dur = (do - pu).dt.total_seconds() / 60

    def outside(s, lo, hi):
        return int(((s < lo) | (s > hi)).sum())  # NaN compares False: nulls are not counted, as in GX

    def not_in(s, allowed):
        return int((s.notna() & ~s.isin(allowed)).sum())

    counts = {
        "pickup_datetime_not_null": int(pu.isna().sum()),
        "dropoff_datetime_not_null": int(do.isna().sum()),
        "PULocationID_not_null": int(raw["PULocationID"].isna().sum()),
        "DOLocationID_not_null": int(raw["DOLocationID"].isna().sum()),
        "trip_distance_not_null": int(raw["trip_distance"].isna().sum()),
        "values_parse": 0,
        "not_a_duplicate": int(raw.duplicated().sum()),
        "pickup_in_month": int((pu.dt.strftime("%Y-%m") != month).sum()),
        "dropoff_after_pickup": int((do <= pu).sum()),
        "duration_max": int((dur > 24 * 60).sum()),
        "trip_distance_range": outside(raw["trip_distance"], 0, 100),
        "passenger_count_range": outside(raw["passenger_count"], 0, 9),
        "fare_amount_range": outside(raw["fare_amount"], 0, 1000),
        "pu_location_known": outside(raw["PULocationID"], 1, 265),
        "do_location_known": outside(raw["DOLocationID"], 1, 265),
        "vendor_known": not_in(raw["VendorID"], [1, 2, 5, 6, 7]),
        "ratecode_known": not_in(raw["RatecodeID"], [1, 2, 3, 4, 5, 6, 99]),
        "payment_type_known": not_in(raw["payment_type"], [0, 1, 2, 3, 4, 5, 6]),
        "store_and_fwd_flag_known": not_in(raw["store_and_fwd_flag"], ["Y", "N"]),
    }
    if service == "green":
        counts["trip_type_known"] = not_in(raw["trip_type"], [1, 2])
    return counts


def _last_run(settings, service, month) -> dict:
    runs = DeltaTable(lakehouse.VALIDATION_RUNS.path(settings)).to_pandas()
    runs = runs[(runs.service == service) & (runs.month == month)].sort_values("started_at")
    return runs.iloc[-1].to_dict()


def _count(settings, table, service, month) -> int:
    if not lakehouse.exists(settings, table):
        return 0
    return len(DeltaTable(table.path(settings)).to_pandas(filters=[("service", "=", service), ("month", "=", month)]))


@pytest.mark.parametrize("month", ["2023-01", "2023-02"])
def test_gx_rule_counts_equal_an_independent_pandas_count(golden, month):
    expected = _pandas_rule_counts(DATA / f"green/green_tripdata_{month}.parquet", month, "green")
    run = _last_run(golden.settings, "green", month)
    assert dict(run["rule_failures"]) == expected
    # The real file is messy: these rules do fire.
    assert expected["pickup_in_month"] > 0 and expected["dropoff_after_pickup"] > 0
    assert expected["fare_amount_range"] > 100 and expected["trip_distance_range"] > 0
    assert run["verdict"] == "passed" and dict(run["suite_versions"])["green_rows"] == "1.1.0"


@pytest.mark.parametrize("service, month", [*[("green", m) for m in GOLDEN_GREEN], ("yellow", "2025-02")])
def test_quarantine_is_lossless_on_every_shipped_month(spark, golden, empty_lake, service, month):
    lake = golden.settings
    if service == "yellow":  # not in the golden lakehouse: landed into a new one
        lake = empty_lake
        ingest.run(spark, lake, service, month)
        validate.run(spark, lake, service, month)
    raw_rows = pq.read_metadata(ingest.landed_file(lake, service, month).path).num_rows
    valid = _count(lake, lakehouse.TRIPS, service, month)
    quarantined = _count(lake, lakehouse.QUARANTINE, service, month)
    assert valid + quarantined == raw_rows == _count(lake, lakehouse.BRONZE, service, month)
    assert 0 < quarantined < 0.1 * raw_rows
    q = DeltaTable(lakehouse.QUARANTINE.path(lake)).to_pandas(
        filters=[("service", "=", service), ("month", "=", month)]
    )
    assert q["failed_rules"].map(len).min() >= 1
    assert q["failed_reasons"].map(len).equals(q["failed_rules"].map(len))
    trips = DeltaTable(lakehouse.TRIPS.path(lake)).to_pandas(
        filters=[("service", "=", service), ("month", "=", month)], columns=["trip_id"]
    )
    assert not set(trips["trip_id"]) & set(q["trip_id"])


def test_rerun_does_not_duplicate_quarantine_rows(spark, lake):
    before = _count(lake, lakehouse.QUARANTINE, "green", "2023-02")
    again = validate.run(spark, lake, "green", "2023-02")
    assert _count(lake, lakehouse.QUARANTINE, "green", "2023-02") == before == again["rows_quarantined"]
    assert _count(lake, lakehouse.TRIPS, "green", "2023-02") == again["rows_valid"]


def _mutated(tmp_path, change):
    table = pq.read_table(DATA / "green/green_tripdata_2023-02.parquet")
    out = tmp_path / "green_tripdata_2023-02.parquet"
    pq.write_table(change(table), out)
    return out


@pytest.mark.parametrize(
    "case, change, rule",
    [
        ("missing column", lambda t: t.drop(["fare_amount"]), "columns_present"),
        (
            "renamed column",
            lambda t: t.rename_columns(["trip_dist" if c == "trip_distance" else c for c in t.column_names]),
            "columns_present",
        ),
        (
            "wrong type",
            lambda t: t.set_column(
                t.column_names.index("trip_distance"), "trip_distance", pc.cast(t["trip_distance"], pa.string())
            ),
            "type_trip_distance",
        ),
    ],
)
def test_broken_schema_rejects_the_whole_month(spark, lake, cli_lakehouse, tmp_path, capsys, case, change, rule):
    """The month is rejected with the rule named; nothing downstream changes; the run is recorded."""
    cli_lakehouse(lake)
    ingest.run(spark, lake, "green", "2023-02", str(_mutated(tmp_path, change)))
    versions = {t.key: table_version(lake, t) for t in (lakehouse.TRIPS, lakehouse.QUARANTINE)}
    rc = main(["validate", "--service", "green", "--month", "2023-02"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == MonthRejected.exit_code
    assert err.startswith("taxi validate: error: green 2023-02 rejected: ") and rule in err
    assert {t.key: table_version(lake, t) for t in (lakehouse.TRIPS, lakehouse.QUARANTINE)} == versions
    run = _last_run(lake, "green", "2023-02")
    assert run["verdict"] == "rejected" and rule in list(run["file_rules_failed"])


def test_too_many_failing_rows_reject_the_month(spark, lake, tmp_path):
    def bad_distances(t):
        d = t["trip_distance"].to_numpy().copy()
        d[: len(d) // 5] = 500.0  # 20% of rows over the 100-mile limit
        return t.set_column(t.column_names.index("trip_distance"), "trip_distance", pa.array(d))

    ingest.run(spark, lake, "green", "2023-02", str(_mutated(tmp_path, bad_distances)))
    versions = {t.key: table_version(lake, t) for t in (lakehouse.TRIPS, lakehouse.QUARANTINE)}
    with pytest.raises(MonthRejected, match=r"of rows fail the row rules .*trip_distance_range="):
        validate.run(spark, lake, "green", "2023-02")
    assert {t.key: table_version(lake, t) for t in (lakehouse.TRIPS, lakehouse.QUARANTINE)} == versions
    assert _last_run(lake, "green", "2023-02")["verdict"] == "rejected"


@pytest.mark.spark
def test_row_rule_predicates_match_gx_semantics_on_a_tiny_frame(spark):
    """Nulls are ignored by range/set rules and counted by not-null rules, exactly as GX does."""
    df = spark.createDataFrame(
        [(1, 5.0, "Y"), (None, 150.0, "N"), (3, None, "X"), (4, -1.0, None)], "v int, d double, f string"
    )
    suite = validate.Suite(
        "t",
        "0",
        [
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "v"}, "meta": {"rule": "v_nn"}},
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": "d", "min_value": 0, "max_value": {"$PARAMETER": "hi"}},
                "meta": {"rule": "d_range"},
            },
            {
                "type": "expect_column_values_to_be_in_set",
                "kwargs": {"column": "f", "value_set": ["Y", "N"]},
                "meta": {"rule": "f_set"},
            },
        ],
    )
    rows = validate.flag_failures(df, suite, {"hi": 100}).orderBy("d").collect()
    got = {(r.v, r.d): sorted(r.failed_rules) for r in rows}
    assert got == {(1, 5.0): [], (None, 150.0): ["d_range", "v_nn"], (3, None): ["f_set"], (4, -1.0): ["d_range"]}
