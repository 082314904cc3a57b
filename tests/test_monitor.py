"""Monitoring: PSI/JS against hand-worked values; the verdict rules at their boundaries; real weeks show low drift;
a shifted week is flagged with the shifted feature named."""

from __future__ import annotations

import json
import math

import pytest
from deltalake import DeltaTable

from jobs import lakehouse, monitor
from jobs.modeling import PREDICTION, load_registered, predict_minutes, setup_mlflow

from .conftest import GOLDEN_WEEK, chromium_dom

DEFAULT_TIER = "integration"  # tests without a tier marker of their own


@pytest.mark.unit
def test_psi_by_hand():
    # shares (0.5, 0.5) -> (0.25, 0.75): (0.25-0.5)ln(0.5) + (0.75-0.5)ln(1.5) = 0.1733 + 0.1014 = 0.2747
    assert monitor.psi([50, 50], [25, 75]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    assert monitor.psi([50, 50], [25, 75]) == pytest.approx(0.2747, abs=1e-4)
    assert monitor.psi([10, 20, 70], [1, 2, 7]) == pytest.approx(0.0)  # same shares, other totals
    # An empty bin is smoothed to 1e-4 instead of dividing by zero.
    assert monitor.psi([100, 0], [50, 50]) == pytest.approx(
        (0.5 - 1) * math.log(0.5) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    )


@pytest.mark.unit
def test_js_distance_by_hand():
    assert monitor.js_distance([1, 0], [0, 1]) == pytest.approx(1.0)  # disjoint: the maximum, base 2
    assert monitor.js_distance([3, 7], [3, 7]) == pytest.approx(0.0)
    # P=(1,0), Q=(0.5,0.5): M=(0.75,0.25); KL(P|M)=log2(4/3); KL(Q|M)=0.5log2(2/3)+0.5log2(2)
    jsd = (math.log2(4 / 3) + 0.5 * math.log2(2 / 3) + 0.5) / 2
    assert monitor.js_distance([2, 0], [1, 1]) == pytest.approx(math.sqrt(jsd))


@pytest.mark.spark
def test_bins_come_from_the_reference_and_count_missing_separately(spark):
    ref = spark.createDataFrame([(float(i),) for i in range(100)] + [(None,)], "x double")
    spec = monitor.BinSpec("x", "continuous", edges=[24.0, 49.0, 74.0])
    counts = monitor.binned_counts(ref, [spec])["x"]
    assert counts == {0: 25, 1: 25, 2: 25, 3: 25, monitor.MISSING: 1}
    cur = spark.createDataFrame([(1000.0,)] * 10, "x double")  # far outside the reference: all in the last bin
    assert monitor.binned_counts(cur, [spec])["x"] == {3: 10}


def _records(psi: dict[str, float], js: dict[str, float] | None = None) -> list[dict]:
    js = js or {}
    return [{"feature": f, "metric": "psi", "value": v} for f, v in psi.items()] + [
        {"feature": f, "metric": "js_distance", "value": js.get(f, 0.0)} for f in psi
    ]


TEN_QUIET = {f"f{i}": 0.01 for i in range(10)}


@pytest.mark.unit
def test_verdict_counts_a_feature_over_either_threshold_and_the_share_at_its_boundary(settings):
    m = settings.monitor
    assert (m.psi_threshold, m.js_threshold, m.share_of_drifted_features) == (0.2, 0.1, 0.3)
    # 2 of 10 features drifted (one by PSI, one by JS): 20% < 30%, ok.
    two = monitor.verdict(_records({**TEN_QUIET, "f0": 0.21}, {"f1": 0.11}), {"rmse": 4.0}, settings)
    assert (two["verdict"], two["retrain"], two["drifted_features"], two["drifted_share"]) == (
        "ok", False, ["f0", "f1"], 0.2)  # fmt: skip
    # 3 of 10: exactly the 30% share, which counts as drift (>=).
    three = monitor.verdict(_records({**TEN_QUIET, "f0": 0.21, "f1": 0.5, "f2": 0.3}), {"rmse": 4.0}, settings)
    assert (three["verdict"], three["retrain"], three["drifted_share"]) == ("drift", True, 0.3)
    # A value equal to its threshold is not over it.
    at = monitor.verdict(_records({**TEN_QUIET, "f0": 0.2}, {"f0": 0.1}), {}, settings)
    assert at["drifted_features"] == [] and at["verdict"] == "ok"


@pytest.mark.unit
def test_verdict_prediction_drift_alone_and_the_error_rule(settings):
    preds = monitor.verdict(_records({**TEN_QUIET, PREDICTION: 0.25}), {"rmse": 4.0}, settings)
    assert (preds["verdict"], preds["retrain"], preds["drifted_share"]) == ("drift", True, 0.0)
    # Accuracy over the limit is an error, and it outranks drift.
    limit = settings.monitor.rmse_threshold
    err = monitor.verdict(_records({**TEN_QUIET, PREDICTION: 0.25}), {"rmse": limit + 0.01}, settings)
    assert (err["verdict"], err["retrain"]) == ("error", True)
    assert monitor.verdict(_records(TEN_QUIET), {"rmse": limit}, settings)["verdict"] == "ok"  # at the limit
    assert monitor.verdict(_records(TEN_QUIET), {}, settings)["verdict"] == "ok"  # no known durations yet


def test_a_real_week_against_the_training_window_shows_low_drift(golden):
    s, week = golden.settings, golden.summaries["monitor"]
    assert week["week"] == GOLDEN_WEEK and week["reference_months"] == ["2022-01", "2022-02", "2023-01"]
    assert week["verdict"] == "ok" and not week["retrain"]
    # What drifts on a normal week with this reference (the monitoring issue makes these not count): a holiday-free
    # week against a window with holidays, and history features whose reference months had partial history.
    assert set(week["drifted_features"]) <= {"is_holiday", "hist_level", "hist_trip_count", "hist_median_duration_min",
                                             "hist_median_speed_mph"}  # fmt: skip
    assert {"trip_distance", PREDICTION, "PULocationID", "DOLocationID"}.isdisjoint(week["drifted_features"])
    assert week["drifted_share"] < s.monitor.share_of_drifted_features
    assert 10000 < week["current_rows"] < 20000  # one week of green trips
    assert 2.0 < week["performance"]["rmse"] < 5.0
    drift = DeltaTable(lakehouse.DRIFT.path(s)).to_pandas()
    rows = drift[(drift.service == "green") & (drift.week == GOLDEN_WEEK)]
    psi = rows[rows.metric == "psi"].set_index("feature")["value"]
    assert psi["trip_distance"] < 0.1 and psi[PREDICTION] < 0.1
    assert {"psi", "js_distance", "ks", "wasserstein", "rmse", "mae", "bias"} <= set(rows.metric)
    flagged = set(rows[rows.drifted].feature)
    assert flagged == set(week["drifted_features"])


def test_monitor_rerun_replaces_the_weeks_rows(spark, lake):
    before = DeltaTable(lakehouse.DRIFT.path(lake)).to_pandas()
    again = monitor.run(spark, lake, "green", GOLDEN_WEEK)
    after = DeltaTable(lakehouse.DRIFT.path(lake)).to_pandas()
    assert len(after) == len(before) and after.run_id.nunique() == 1 and set(after.run_id) == {again["run_id"]}


def test_a_shifted_week_is_flagged_and_the_shifted_feature_named(spark, golden):
    from pyspark.sql import functions as F

    s = golden.settings
    setup_mlflow(s)
    model, _ = load_registered(s, "green", alias="champion")
    feats = lakehouse.read(spark, s, lakehouse.FEATURES).where("service = 'green'")
    cols = [*monitor.CONTINUOUS, *monitor.CATEGORICAL]
    ref = predict_minutes(feats.where(F.col("month").isin("2022-01", "2022-02", "2023-01")), model, cols)
    week = feats.where("month = '2023-02'").where(F.dayofmonth("pickup_datetime").between(6, 12))
    shifted = week.withColumn("trip_distance", F.col("trip_distance") * 1.5)
    specs = monitor.bin_specs(ref, s.monitor.bins)
    ref_counts = monitor.binned_counts(ref, specs)

    def result(cur):
        cur_counts = monitor.binned_counts(predict_minutes(cur, model, cols), specs)
        records = monitor.drift_metrics(specs, ref_counts, cur_counts)
        return monitor.verdict(records, {}, s), {r["feature"]: r["value"] for r in records if r["metric"] == "psi"}

    ok, ok_psi = result(week)
    bad, bad_psi = result(shifted)
    assert "trip_distance" not in ok["drifted_features"] and ok_psi["trip_distance"] < 0.05
    assert "trip_distance" in bad["drifted_features"] and bad_psi["trip_distance"] > 0.2
    assert PREDICTION in bad["drifted_features"]  # longer distances -> longer predicted trips
    assert bad["retrain"] and bad["verdict"] == "drift"
    # Features the shift did not touch stay as they were.
    assert set(bad["drifted_features"]) - set(ok["drifted_features"]) == {"trip_distance", PREDICTION}
    assert bad_psi["PULocationID"] == pytest.approx(ok_psi["PULocationID"])


def test_mlflow_run_and_report_exist(golden):
    week = golden.summaries["monitor"]
    run = golden.client().get_run(week["mlflow_run_id"])
    assert run.data.params["week"] == GOLDEN_WEEK and run.data.tags["verdict"] == week["verdict"]
    assert run.data.metrics["psi_trip_distance"] >= 0
    assert run.data.metrics["rmse"] == pytest.approx(week["performance"]["rmse"])
    arts = [a.path for a in golden.client().list_artifacts(run.info.run_id, "report")]
    assert arts == [f"report/{GOLDEN_WEEK}.html"]
    flag = json.loads((golden.settings.reports_dir / f"drift/green/{GOLDEN_WEEK}.json").read_text())
    assert flag["retrain"] is False and flag["verdict"] == "ok" and flag["week"] == GOLDEN_WEEK


@pytest.mark.slow
def test_report_renders_in_chromium_without_network(golden):
    week = golden.summaries["monitor"]
    dom = chromium_dom(f"file://{week['report']}")
    assert "Verdict: <b>ok</b>" in dom and "trip_distance" in dom and dom.count("<img") >= 5
