"""Features: hand-checked transforms, no leakage from a month into its own history, idempotent reruns."""

from __future__ import annotations

import math
import re
from datetime import datetime

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality
from deltalake import DeltaTable
from pyspark.sql import functions as F

from jobs.features import freshness, transforms
from jobs.features import job as features
from jobs.ingest import job as ingest
from jobs.models.inputs import MODEL_FEATURES
from jobs.platform import lakehouse
from jobs.platform.errors import MissingUpstream
from jobs.training import job as train
from jobs.validation import job as validate

from .conftest import DATA, GOLDEN_GREEN, partition_rows

DEFAULT_TIER = "integration"  # tests without a tier marker of their own


@pytest.mark.spark
def test_haversine_and_bearing_of_known_points(spark):
    df = spark.createDataFrame(
        [(0.0, 0.0, 1.0, 0.0), (0.0, 0.0, 0.0, 1.0), (-73.7781, 40.6413, -73.9855, 40.7580)],
        "pu_lon double, pu_lat double, do_lon double, do_lat double",
    )
    rows = transforms.add_geo_features(df).collect()
    one_degree_km = 6371.0088 * math.pi / 180  # 111.195 km along the equator or a meridian
    assert rows[0].centroid_distance_km == pytest.approx(one_degree_km, rel=1e-9)
    assert rows[0].centroid_bearing_deg == pytest.approx(90.0)  # due east
    assert rows[1].centroid_distance_km == pytest.approx(one_degree_km, rel=1e-9)
    assert rows[1].centroid_bearing_deg == pytest.approx(0.0)  # due north
    # JFK -> Times Square: about 21.7 km, heading north-west (306.65 degrees by the same formula in plain Python).
    assert rows[2].centroid_distance_km == pytest.approx(21.73, abs=0.05)
    assert rows[2].centroid_bearing_deg == pytest.approx(306.65, abs=0.01)


@pytest.mark.spark
def test_durations_elapse_across_the_dst_changes(spark):
    """New York wall-clock times: 2022-03-13 01:55 EST to 03:05 EDT took 10 minutes, not 70; an ordinary trip and
    one on the fall-back night outside its repeated hour keep their wall-clock difference. Validation's duration
    rule reads the same minutes as the target."""
    from jobs.validation.job import add_rule_columns

    trips = [
        (datetime(2022, 3, 13, 1, 55), datetime(2022, 3, 13, 3, 5), 10.0),  # across spring-forward
        (datetime(2022, 3, 12, 1, 55), datetime(2022, 3, 12, 3, 5), 70.0),  # the day before: an ordinary night
        (datetime(2022, 11, 6, 0, 20), datetime(2022, 11, 6, 0, 50), 30.0),  # fall-back night, before 01:00
        (datetime(2022, 7, 4, 12, 0), datetime(2022, 7, 4, 12, 12, 30), 12.5),
    ]
    df = spark.createDataFrame(trips, "pickup_datetime timestamp_ntz, dropoff_datetime timestamp_ntz, expected double")
    got = [(r.duration_min, r.expected) for r in transforms.add_duration(df).collect()]
    assert [g for g, _ in got] == [e for _, e in got]
    bronze = df.withColumn("cast_errors", F.array().cast("array<string>"))
    assert [r.duration_min for r in add_rule_columns(bronze).collect()] == [e for *_, e in trips]


@pytest.mark.spark
def test_time_features_hour_of_week_and_holidays(spark):
    holidays = features.us_federal_holidays([2023])
    assert "2023-01-02" in holidays  # New Year's Day fell on a Sunday: observed Monday
    assert "2023-07-04" in holidays and "2023-11-23" in holidays and "2023-02-06" not in holidays
    df = spark.createDataFrame(
        [(datetime(2023, 2, 6, 10, 30),), (datetime(2023, 2, 12, 23, 45, 36),), (datetime(2023, 7, 4, 0, 0),)],
        "pickup_datetime timestamp",
    )
    r = transforms.add_time_features(df, holidays).orderBy("pickup_datetime").collect()
    # Monday 10:30 -> ISO day 1, hour of week 10; Sunday 23:45:36 -> day 7, hour of week 6*24+23 = 167.
    assert (r[0].day_of_week, r[0].hour_of_week, r[0].pickup_hour, r[0].is_weekend, r[0].is_holiday) == (
        1,
        10,
        10.5,
        0,
        0,
    )
    assert (r[1].day_of_week, r[1].hour_of_week, r[1].is_weekend) == (7, 167, 1)
    assert r[1].pickup_hour == pytest.approx(23.76)
    assert (r[2].day_of_week, r[2].is_holiday) == (2, 1)


@pytest.mark.spark
def test_history_fallbacks_pick_the_finest_level_with_enough_trips(spark):
    cols = "PULocationID int, DOLocationID int, hour_of_week int, pu_borough string, do_borough string"
    past = spark.createDataFrame(
        [
            (1, 2, 10, "A", "B", 10.0, 1.0),
            (1, 2, 10, "A", "B", 20.0, 2.0),
            (1, 2, 10, "A", "B", 30.0, 3.0),  # pair (1,2) at hour 10: 3 trips, median 20 min
            (1, 3, 10, "A", "B", 5.0, 1.0),
            (1, 3, 11, "A", "B", 7.0, 1.0),  # pair (1,3): one trip per hour, 2 in all: median 6
            (5, 6, 0, "C", "D", 40.0, 10.0),
        ],
        f"{cols}, duration_min double, trip_distance double",
    )
    current = spark.createDataFrame(
        [
            (1, 2, 10, "A", "B"),  # level 0: pair x hour of week
            (1, 3, 10, "A", "B"),  # level 1: pair
            (1, 4, 50, "A", "B"),  # level 2: pickup zone 1 (5 trips: 10,20,30,5,7 -> median 10)
            (9, 9, 0, "A", "B"),  # level 3: borough pair A->B (same 5 trips)
            (9, 9, 0, "X", "Y"),  # level 4: global (6 trips: median of 5,7,10,20,30,40 = 15)
        ],
        cols,
    )
    out = transforms.add_history_features(current, past, min_trips=2).collect()
    got = {(r.PULocationID, r.DOLocationID, r.pu_borough): r for r in out}
    assert (got[(1, 2, "A")].hist_level, got[(1, 2, "A")].hist_median_duration_min) == (0, 20.0)
    assert got[(1, 2, "A")].hist_trip_count == 3
    # Speed: 2 miles in 20 minutes = 6 mph (median of 6, 6, 6).
    assert got[(1, 2, "A")].hist_median_speed_mph == pytest.approx(6.0)
    assert (got[(1, 3, "A")].hist_level, got[(1, 3, "A")].hist_median_duration_min) == (1, 6.0)
    assert (got[(1, 4, "A")].hist_level, got[(1, 4, "A")].hist_median_duration_min) == (2, 10.0)
    assert (got[(9, 9, "A")].hist_level, got[(9, 9, "A")].hist_trip_count) == (3, 5)
    assert (got[(9, 9, "X")].hist_level, got[(9, 9, "X")].hist_median_duration_min) == (4, 15.0)


@pytest.mark.spark
def test_no_history_leaves_history_columns_null(spark):
    current = spark.createDataFrame(
        [(1, 2, 10, "A", "B")],
        "PULocationID int, DOLocationID int, hour_of_week int, pu_borough string, do_borough string",
    )
    past = (
        current.withColumn("duration_min", current.PULocationID * 1.0)
        .withColumn("trip_distance", current.PULocationID * 1.0)
        .limit(0)
    )
    r = transforms.add_history_features(current, past, min_trips=1).first()
    assert r.hist_level is None and r.hist_median_duration_min is None


def test_features_hold_no_post_trip_columns(golden):
    cols = set(DeltaTable(lakehouse.FEATURES.path(golden.settings)).schema().to_arrow().names)
    for leak in ("fare_amount", "tip_amount", "tolls_amount", "total_amount", "dropoff_datetime", "payment_type"):
        assert leak not in cols and leak not in MODEL_FEATURES
    assert {"duration_min", "in_training_range"} <= cols


def test_feature_table_reads_with_deltalake_and_covers_every_validated_trip(golden):
    feats = partition_rows(golden.settings, lakehouse.FEATURES, "green", "2023-02")
    trips = partition_rows(golden.settings, lakehouse.TRIPS, "green", "2023-02", ["trip_id"])
    assert len(feats) == len(trips) and set(feats["trip_id"]) == set(trips["trip_id"])
    # Training range flag is stored, not applied: out-of-range trips are still there.
    assert 0.9 < feats["in_training_range"].mean() < 1.0
    # History comes from the three latest months present within the 13 before: 2023-02 reads 2023-01 and, past the
    # gap 2022-03..12, 2022-01/02; most trips get pair-level history.
    assert golden.summaries["features 2023-02"]["history_months"] == ["2022-01", "2022-02", "2023-01"]
    assert (feats["hist_level"] <= 1).mean() > 0.7
    assert golden.summaries["features 2023-01"]["history_months"] == ["2022-01", "2022-02"]
    jan = partition_rows(golden.settings, lakehouse.FEATURES, "green", "2023-01", ["hist_level"])
    assert jan["hist_level"].notna().all() and (jan["hist_level"] <= 1).mean() > 0.7
    # 2022-01 has nothing before it: no history.
    assert golden.summaries["features 2022-01"]["history_months"] == []
    first = partition_rows(golden.settings, lakehouse.FEATURES, "green", "2022-01", ["hist_level"])
    assert first["hist_level"].isna().all()
    assert golden.summaries["features 2022-02"]["history_months"] == ["2022-01"]


def test_rerun_is_idempotent(spark, lake):
    def month_features():
        return (
            lakehouse.read(spark, lake, lakehouse.FEATURES)
            .where(lakehouse.partition_predicate("green", "2023-02"))
            .drop("features_run_id")
        )

    before = month_features().localCheckpoint()
    again = features.run(spark, lake, "green", "2023-02")
    assert again["rows"] == before.count() == partition_rows(lake, lakehouse.TRIPS, "green", "2023-02").shape[0]
    assert_df_equality(month_features(), before, ignore_row_order=True, ignore_nullable=True)


def _stretched(tmp_path, month: str):
    """The real file with every 1-60 minute trip made 1.5x longer (validity of each row unchanged)."""
    table = pq.read_table(DATA / f"green/green_tripdata_{month}.parquet")
    df = table.to_pandas()
    dur = df["lpep_dropoff_datetime"] - df["lpep_pickup_datetime"]
    mask = dur.between(pd.Timedelta(minutes=1), pd.Timedelta(minutes=60))
    df.loc[mask, "lpep_dropoff_datetime"] = df.loc[mask, "lpep_pickup_datetime"] + dur[mask] * 1.5
    out = tmp_path / f"green_tripdata_{month}.parquet"
    pq.write_table(pa.Table.from_pandas(df, schema=table.schema, preserve_index=False), out)
    return out


def _history_and_target(settings, month):
    key = ["pickup_datetime", "PULocationID", "DOLocationID", "trip_distance", "VendorID"]
    df = DeltaTable(lakehouse.FEATURES.path(settings)).to_pandas(
        filters=[("service", "=", "green"), ("month", "=", month)],
        columns=key + transforms.HISTORY_COLUMNS + ["duration_min"],
    )
    hist = df[key + transforms.HISTORY_COLUMNS].sort_values(key + transforms.HISTORY_COLUMNS).reset_index(drop=True)
    return hist, df["duration_min"].sum()


def test_a_months_own_durations_never_reach_its_history_features(spark, lake, tmp_path):
    def land(month, source=None):
        ingest.run(spark, lake, "green", month, source)
        return validate.run(spark, lake, "green", month)

    hist0, target0 = _history_and_target(lake, "2022-02")  # as built: 2022-02's history from the real 2022-01
    assert hist0["hist_level"].notna().all()

    # Change 2022-02's own durations: its history features must not move, its target must.
    relanded = land("2022-02", str(_stretched(tmp_path, "2022-02")))
    # Its own features are stale, and so are those of the months that read it as history across the 2022 gap.
    assert relanded["stale_features"] == ["2022-02", "2023-01", "2023-02"]
    features.run(spark, lake, "green", "2022-02")
    hist1, target1 = _history_and_target(lake, "2022-02")
    pd.testing.assert_frame_equal(hist1, hist0)
    assert target1 > target0 * 1.3

    # Positive control: changing the EARLIER month does move 2022-02's history.
    land("2022-01", str(_stretched(tmp_path, "2022-01")))
    features.run(spark, lake, "green", "2022-02")
    hist2, _ = _history_and_target(lake, "2022-02")
    ratio = hist2["hist_median_duration_min"].median() / hist0["hist_median_duration_min"].median()
    assert 1.3 < ratio < 1.7


def test_relanding_a_month_makes_the_features_built_on_it_stale_until_they_are_recomputed(spark, lake):
    """2023-02's features read 2023-01's validated trips as history: re-landing 2023-01 makes both months' features
    stale; training on them is refused with the commands to run; recomputing them clears it."""
    assert freshness.stale_months(lake, "green", list(GOLDEN_GREEN)) == {}  # as built
    ingest.run(spark, lake, "green", "2023-01")
    relanded = validate.run(spark, lake, "green", "2023-01")
    assert relanded["stale_features"] == ["2023-01", "2023-02"]
    stale = freshness.stale_months(lake, "green", list(GOLDEN_GREEN))
    assert sorted(stale) == ["2023-01", "2023-02"] and "silver 2023-01 was re-validated" in stale["2023-02"]
    refresh = "`taxi features --service green --month 2023-01 && taxi features --service green --month 2023-02`"
    with pytest.raises(MissingUpstream, match=r"green features are stale for 2023-01, 2023-02 .*" + re.escape(refresh)):
        train.run(spark, lake, "green", "2023-02", months=13)
    # --allow-stale goes past the refusal (to the next check: the champion has seen 2023-01, so nothing is trained).
    with pytest.raises(MissingUpstream, match="green features are stale for 2023-01"):
        train.run(spark, lake, "green", "2023-01", months=13)
    overridden = train.run(spark, lake, "green", "2023-01", months=13, allow_stale=True)
    assert "champion v1 has seen months through 2023-01" in overridden["skipped"]
    for month in ("2023-01", "2023-02"):
        features.run(spark, lake, "green", month)
    assert freshness.stale_months(lake, "green", list(GOLDEN_GREEN)) == {}
    freshness.require_fresh(lake, "green", list(GOLDEN_GREEN))  # what train checks: passes now
