"""Metric tables: accuracy per window x slice x model version, as a dashboard reads them. The golden lakehouse's
monitor runs wrote them; pandas recomputes them from `gold/predictions` and the features; `taxi monitor --metrics`
fills them again, to the same rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable

from jobs.models.inputs import PREDICTION, TARGET
from jobs.models.interval import P10, P90
from jobs.monitoring import metric_tables
from jobs.platform import lakehouse
from jobs.platform.config import ConfigError
from jobs.platform.months import week_bounds

from .conftest import GOLDEN_WEEK, GOLDEN_WEEKS, partition_rows

DEFAULT_TIER = "integration"  # tests without a tier marker of their own
KEYS = ["service", "window_type", "window", "slice_key", "slice_value", "model_version"]
MEASURES = ["trips", "n", "rmse", "mae", "rmsle", "bias", "coverage", "interval_width"]


def _table(settings) -> pd.DataFrame:
    return DeltaTable(lakehouse.ACCURACY_METRICS.path(settings)).to_pandas()


def _scored(settings) -> pd.DataFrame:
    """2023-02 as scored, with the features a slice needs, in pandas (delta-rs, no Spark)."""
    preds = partition_rows(settings, lakehouse.PREDICTIONS, "green", "2023-02")
    feats = partition_rows(
        settings,
        lakehouse.FEATURES,
        "green",
        "2023-02",
        ["trip_id", "pu_borough", "PULocationID", "VendorID", "in_training_range", TARGET],
    )
    return preds[["trip_id", "pickup_datetime", "model_version", PREDICTION, P10, P90]].merge(feats, on="trip_id")


def _in_week(trips: pd.DataFrame, week: str) -> pd.DataFrame:
    start, end = week_bounds(week)
    picked = pd.to_datetime(trips.pickup_datetime)
    return trips[(picked >= pd.Timestamp(start)) & (picked < pd.Timestamp(end))]


def test_one_row_per_week_and_borough_with_the_numbers_pandas_recomputes(golden):
    table, trips = _table(golden.settings), _scored(golden.settings)
    assert not table.duplicated(KEYS).any()
    assert set(table.slice_key.dropna()) == set(golden.settings.monitor.slices)
    by_borough = table[(table.window_type == "week") & (table.slice_key == "pu_borough")]
    assert set(by_borough.window) == set(GOLDEN_WEEKS)
    for week in GOLDEN_WEEKS:  # every borough with a scored trip that week, once (one version scored them all)
        rows = by_borough[by_borough.window == week]
        assert sorted(rows.slice_value) == sorted(_in_week(trips, week).pu_borough.unique())
        assert set(rows.model_version) == set(trips.model_version)
    week = _in_week(trips, GOLDEN_WEEK)
    for borough in ("Queens", "Manhattan"):
        got = by_borough[(by_borough.window == GOLDEN_WEEK) & (by_borough.slice_value == borough)].iloc[0]
        mine = week[week.pu_borough == borough]
        known = mine[mine.in_training_range]
        err = known[PREDICTION] - known[TARGET]
        inside = (known[TARGET] >= known[P10]) & (known[TARGET] <= known[P90])
        assert got.trips == len(mine) and got.n == len(known) > 100
        assert got.rmse == pytest.approx(float(np.sqrt((err**2).mean())), abs=1e-6)
        assert got.mae == pytest.approx(float(err.abs().mean()), abs=1e-6)
        assert got.bias == pytest.approx(float(err.mean()), abs=1e-6)
        assert got.coverage == pytest.approx(float(inside.mean()), abs=1e-6)
        assert got.interval_width == pytest.approx(float((known[P90] - known[P10]).mean()), abs=1e-6)


def test_whole_population_rows_agree_with_the_weekly_reports_and_months_are_windows_too(golden):
    table = _table(golden.settings)
    whole = table[table.slice_key.isna()]
    assert whole.slice_value.isna().all()
    for week in GOLDEN_WEEKS:
        report = golden.summaries[f"monitor {week}"]
        row = whole[(whole.window_type == "week") & (whole.window == week)].iloc[0]
        assert row.model_version == report["model_version"] and row.n == report["known_rows"]
        assert row.trips == report["current_rows"]
        for metric in ("rmse", "mae", "bias", "coverage", "interval_width"):
            assert row[metric] == pytest.approx(report["performance"][metric], abs=1e-9), metric
    # The weeks reported touch only 2023-02: its month row covers every scored trip of the month.
    months = whole[whole.window_type == "month"]
    assert list(months.window) == ["2023-02"]
    assert months.trips.item() == len(partition_rows(golden.settings, lakehouse.PREDICTIONS, "green", "2023-02"))


def test_a_months_rows_come_from_its_first_reported_week_and_a_new_version_writes_them_again(golden, spark):
    """Scoring is monthly: 2023-W06's run wrote 2023-02's rows, W07 and W08 wrote their weeks only. A version that
    scored the month and has no rows yet (a new champion's rescoring, a shadow) makes the month pending again."""
    table, runs = _table(golden.settings), {w: golden.summaries[f"monitor {w}"]["run_id"] for w in GOLDEN_WEEKS}
    assert set(table[table.window_type == "month"].run_id) == {runs["2023-W06"]}
    for week in GOLDEN_WEEKS:
        assert set(table[table.window == week].run_id) == {runs[week]}
    version = int(table.model_version.iloc[0])

    def pending(*scored):
        trips = spark.createDataFrame(list(scored), "month string, model_version int")
        return metric_tables.pending_months(spark, golden.settings, "green", trips)

    assert pending(("2023-02", version)) == []
    assert pending(("2023-02", version), ("2023-02", version + 1)) == ["2023-02"]
    assert pending(("2023-02", version), ("2023-03", version)) == ["2023-03"]


def test_profile_rows_per_column_agree_with_pandas(golden):
    table = DeltaTable(lakehouse.PROFILE_METRICS.path(golden.settings)).to_pandas()
    assert not table.duplicated([*KEYS, "column"]).any()
    week = _in_week(_scored(golden.settings), GOLDEN_WEEK)
    whole = table[(table.window_type == "week") & (table.window == GOLDEN_WEEK) & table.slice_key.isna()]
    assert {"trip_distance", "PULocationID", PREDICTION, TARGET} <= set(whole.column)
    row = whole[whole.column == PREDICTION].iloc[0]
    values = week[PREDICTION]
    assert row["count"] == len(values) and row.null_share == 0 and pd.isna(row.distinct_count)
    assert row["mean"] == pytest.approx(values.mean(), abs=1e-6)
    for name, q in (("p05", 0.05), ("p50", 0.5), ("p95", 0.95)):  # rank error at most 1/1,000 of the rows
        low, high = values.quantile(max(0, q - 1e-3)), values.quantile(min(1, q + 1e-3))
        assert low - 1e-9 <= row[name] <= high + 1e-9, (name, row[name], low, high)
    queens = table[(table.window == GOLDEN_WEEK) & (table.slice_value == "Queens") & (table.column == TARGET)].iloc[0]
    actual = week[week.pu_borough == "Queens"][TARGET]
    assert queens["count"] == actual.notna().sum() and queens.null_share == pytest.approx(actual.isna().mean())
    zones = whole[whole.column == "PULocationID"].iloc[0]
    assert pd.isna(zones["mean"]) and zones.distinct_count == week.PULocationID.nunique()


def _rows(settings, table) -> pd.DataFrame:
    more = {lakehouse.PROFILE_METRICS: ["column"], lakehouse.DRIFT_METRICS: ["column", "baseline"]}
    keys = KEYS + more.get(table, [])
    rows = DeltaTable(table.path(settings)).to_pandas().drop(columns=["run_id", "computed_at"])
    return rows.sort_values(keys, na_position="first").reset_index(drop=True)


def test_the_fill_command_rebuilds_the_same_rows_and_a_rerun_changes_nothing(spark, lake, cli_lakehouse, capsys):
    from jobs.entry.cli import main

    tables = (lakehouse.ACCURACY_METRICS, lakehouse.PROFILE_METRICS, lakehouse.DRIFT_METRICS)
    expected = {t.key: _rows(lake, t) for t in tables}
    for table in tables:
        spark.sql(f"DELETE FROM delta.`{table.path(lake)}`")
    cli_lakehouse(lake)
    # percentile_approx's summaries depend on the rows read with a group's (a week alone in its monitor run, the
    # months here): past 1,000 trips a group's p05/p50/p95 may move by a rank or two (the rank error that the
    # pandas test above bounds), so they are compared on the fill's own rerun only, exactly like every other column.
    quantiles = ["p05", "p50", "p95"]
    for run in range(2):
        capsys.readouterr()
        assert main(["monitor", "--service", "green", "--metrics"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["weeks"] == list(GOLDEN_WEEKS) and out["months"] == ["2023-02"]
        for table in tables:
            got, want = _rows(lake, table), expected[table.key]
            if run == 0 and table is lakehouse.PROFILE_METRICS:
                got, want = got.drop(columns=quantiles), want.drop(columns=quantiles)
            pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-9)
            expected[table.key] = _rows(lake, table)


def test_drift_rows_against_the_reference_are_the_weekly_reports_and_slices_have_both_baselines(golden):
    """The whole population against the reference: the weekly report's PSI and JS distance of every column; a
    borough against its own reference trips and against the week before; binned KS and Wasserstein for numbers only."""
    table = DeltaTable(lakehouse.DRIFT_METRICS.path(golden.settings)).to_pandas()
    report = DeltaTable(lakehouse.DRIFT.path(golden.settings)).to_pandas()
    assert set(table.baseline) == {"reference", "previous_window"}
    whole = table[table.slice_key.isna() & (table.baseline == "reference") & (table.window_type == "week")]
    for week in GOLDEN_WEEKS:
        ours = whole[whole.window == week].set_index("column")
        theirs = report[report.week == week].pivot(index="feature", columns="metric", values="value")
        judged = theirs.index.intersection(ours.index)
        assert len(judged) == len(ours) == 22  # the monitored features and the prediction, as in the report
        for metric in ("psi", "js_distance"):
            np.testing.assert_allclose(ours.loc[judged, metric], theirs.loc[judged, metric], rtol=1e-9, atol=1e-12)
        assert (ours.baseline_window == report[report.week == week].reference_months.iloc[0]).all()
    queens = table[(table.slice_value == "Queens") & (table.window == "2023-W07") & (table.column == "trip_distance")]
    assert set(queens.baseline) == {"reference", "previous_window"}
    assert queens.set_index("baseline").baseline_window["previous_window"] == "2023-W06"
    assert (queens.n > 0).all() and (queens.baseline_n > 0).all()
    continuous = table[table.ks.notna()]
    assert ((continuous.ks >= 0) & (continuous.ks <= 1) & (continuous.wasserstein >= 0)).all()
    assert table[table.column == "VendorID"].ks.isna().all()  # a category has no order: no KS, no Wasserstein
    assert not table.duplicated([*KEYS, "column", "baseline"]).any()


@pytest.mark.unit
def test_binned_distances_match_the_monitors_math_and_the_cdf_gaps():
    from jobs.models.binning import MISSING, BinSpec
    from jobs.monitoring.drift_metrics import distances
    from jobs.monitoring.stats import js_distance, psi

    spec = BinSpec("x", "continuous", edges=[1.0, 2.0, 4.0])  # bins (-inf,1] (1,2] (2,4] (4,inf), missing
    base, cur = {0: 10, 1: 10, 2: 10, 3: 10, MISSING: 5}, {0: 0, 1: 20, 2: 10, 3: 10, MISSING: 0}
    got = distances(spec, base, cur)
    labels = spec.labels()
    assert got["psi"] == pytest.approx(psi([base.get(b, 0) for b in labels], [cur.get(b, 0) for b in labels]))
    assert got["js_distance"] == pytest.approx(js_distance([base[b] for b in labels], [cur[b] for b in labels]))
    # CDFs at the edges 1, 2, 4: base .25 .5 .75, current 0 .5 .75 -> gaps .25 0 0
    assert got["ks"] == pytest.approx(0.25)
    assert got["wasserstein"] == pytest.approx(0.25 * 1.0 + 0 * 2.0)
    assert distances(BinSpec("c", "categorical", categories=[1.0]), {0: 1}, {0: 1})["ks"] is None


@pytest.mark.spark
def test_every_version_gets_its_own_rows_and_an_unknown_slice_is_named(spark):
    from pyspark.sql import functions as F

    rows = [  # (trip, version, borough, pickup_hour, actual, predicted, in range)
        (1, 3, "Queens", 8.5, 10.0, 12.0, True),
        (2, 3, "Queens", 23.0, 20.0, 17.0, True),
        (3, 3, "Bronx", 8.0, 90.0, 30.0, False),
        (1, 4, "Queens", 8.5, 10.0, 11.0, True),
    ]
    trips = (
        spark.createDataFrame(
            rows,
            "trip_id int, model_version int, pu_borough string, pickup_hour double, duration_min double, "
            "predicted_duration_min double, in_training_range boolean",
        )
        .withColumn(P10, F.col(PREDICTION) - 2)
        .withColumn(P90, F.col(PREDICTION) + 2)
    )
    windows = {"week": F.lit("2023-W06"), "month": F.when(F.col("trip_id") == 1, F.lit("2023-02"))}
    got = metric_tables.accuracy_metrics(trips, ["pu_borough", "hour_band"], "green", windows).collect()
    assert {r.window_type for r in got if r.window == "2023-02"} == {"month"}  # trip 1 only, in both versions
    assert sorted(r.trips for r in got if r.window == "2023-02" and r.slice_key is None) == [1, 1]
    table = {(r.slice_key, r.slice_value, r.model_version): r for r in got if r.window_type == "week"}
    assert set(table) == {
        (None, None, 3),
        ("pu_borough", "Queens", 3),
        ("pu_borough", "Bronx", 3),
        ("hour_band", "morning_peak", 3),
        ("hour_band", "late", 3),
        (None, None, 4),
        ("pu_borough", "Queens", 4),
        ("hour_band", "morning_peak", 4),
    }
    whole = table[(None, None, 3)]
    assert (whole.trips, whole.n) == (3, 2)  # the out-of-range trip is counted, not measured
    assert whole.rmse == pytest.approx(np.sqrt((4 + 9) / 2)) and whole.bias == pytest.approx(-0.5)
    assert whole.coverage == pytest.approx(0.5)  # 10 in [10, 14]; 20 outside [15, 19]
    bronx = table[("pu_borough", "Bronx", 3)]
    assert bronx.trips == 1 and bronx.n == 0 and bronx.rmse is None
    assert table[(None, None, 4)].rmse == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="monitor.slices names borough"):
        metric_tables.accuracy_metrics(trips, ["borough"], "green", windows)
