"""Monitoring: PSI/JS against hand-worked values; real weeks show low drift; a shifted week is flagged."""

from __future__ import annotations

import json
import math
import subprocess

import mlflow
import pytest
from deltalake import DeltaTable

from jobs import lakehouse, monitor, score
from jobs.modeling import PREDICTION, load_registered, predict_minutes

from .conftest import require_chromium


def test_psi_by_hand():
    # shares (0.5, 0.5) -> (0.25, 0.75): (0.25-0.5)ln(0.5) + (0.75-0.5)ln(1.5) = 0.1733 + 0.1014 = 0.2747
    assert monitor.psi([50, 50], [25, 75]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    assert monitor.psi([50, 50], [25, 75]) == pytest.approx(0.2747, abs=1e-4)
    assert monitor.psi([10, 20, 70], [1, 2, 7]) == pytest.approx(0.0)  # same shares, other totals
    # An empty bin is smoothed to 1e-4 instead of dividing by zero.
    assert monitor.psi([100, 0], [50, 50]) == pytest.approx(
        (0.5 - 1) * math.log(0.5) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    )


def test_js_distance_by_hand():
    assert monitor.js_distance([1, 0], [0, 1]) == pytest.approx(1.0)  # disjoint: the maximum, base 2
    assert monitor.js_distance([3, 7], [3, 7]) == pytest.approx(0.0)
    # P=(1,0), Q=(0.5,0.5): M=(0.75,0.25); KL(P|M)=log2(4/3); KL(Q|M)=0.5log2(2/3)+0.5log2(2)
    jsd = (math.log2(4 / 3) + 0.5 * math.log2(2 / 3) + 0.5) / 2
    assert monitor.js_distance([2, 0], [1, 1]) == pytest.approx(math.sqrt(jsd))


def test_bins_come_from_the_reference_and_count_missing_separately(spark):
    ref = spark.createDataFrame([(float(i),) for i in range(100)] + [(None,)], "x double")
    spec = monitor.BinSpec("x", "continuous", edges=[24.0, 49.0, 74.0])
    counts = monitor.binned_counts(ref, [spec])["x"]
    assert counts == {0: 25, 1: 25, 2: 25, 3: 25, monitor.MISSING: 1}
    cur = spark.createDataFrame([(1000.0,)] * 10, "x double")  # far outside the reference: all in the last bin
    assert monitor.binned_counts(cur, [spec])["x"] == {3: 10}


@pytest.fixture(scope="module")
def scored_feb(spark, settings, trained_green):
    return score.run(spark, settings, "green", "2023-02")


@pytest.fixture(scope="module")
def real_week(spark, settings, scored_feb):
    return monitor.run(spark, settings, "green", "2023-W06")


def test_a_real_week_against_the_training_window_shows_low_drift(settings, real_week):
    assert real_week["reference_months"] == ["2022-01", "2022-02", "2023-01"]
    assert real_week["verdict"] == "ok" and not real_week["retrain"]
    assert real_week["drifted_share"] < settings.monitor.share_of_drifted_features
    assert 10000 < real_week["current_rows"] < 20000  # one week of green trips
    assert 2.0 < real_week["performance"]["rmse"] < 5.0
    drift = DeltaTable(lakehouse.DRIFT.path(settings)).to_pandas()
    week = drift[(drift.service == "green") & (drift.week == "2023-W06")]
    psi = week[week.metric == "psi"].set_index("feature")["value"]
    assert psi["trip_distance"] < 0.1 and psi[PREDICTION] < 0.1
    assert {"psi", "js_distance", "ks", "wasserstein", "rmse", "mae", "bias"} <= set(week.metric)


def test_monitor_rerun_replaces_the_weeks_rows(spark, settings, real_week):
    before = DeltaTable(lakehouse.DRIFT.path(settings)).to_pandas()
    monitor.run(spark, settings, "green", "2023-W06")
    after = DeltaTable(lakehouse.DRIFT.path(settings)).to_pandas()
    assert len(after[after.week == "2023-W06"]) == len(before[before.week == "2023-W06"])


def test_a_shifted_week_is_flagged_and_the_shifted_feature_named(spark, settings, scored_feb):
    from pyspark.sql import functions as F

    model, mv = load_registered(settings, "green", alias="champion")
    feats = lakehouse.read(spark, settings, lakehouse.FEATURES).where("service = 'green'")
    ref = predict_minutes(feats.where(F.col("month").isin("2022-01", "2022-02", "2023-01")), model,
                          [*monitor.CONTINUOUS, *monitor.CATEGORICAL])  # fmt: skip
    week = feats.where("month = '2023-02'").where(F.dayofmonth("pickup_datetime").between(6, 12))
    shifted = week.withColumn("trip_distance", F.col("trip_distance") * 1.5)
    cur_ok = predict_minutes(week, model, [*monitor.CONTINUOUS, *monitor.CATEGORICAL])
    cur_shifted = predict_minutes(shifted, model, [*monitor.CONTINUOUS, *monitor.CATEGORICAL])
    specs = monitor.bin_specs(ref, settings.monitor.bins)
    ref_counts = monitor.binned_counts(ref, specs)

    def result(cur):
        records = monitor.drift_metrics(specs, ref_counts, monitor.binned_counts(cur, specs))
        return monitor.verdict(records, {}, settings), {
            r["feature"]: r["value"] for r in records if r["metric"] == "psi"
        }

    ok, ok_psi = result(cur_ok)
    bad, bad_psi = result(cur_shifted)
    assert "trip_distance" not in ok["drifted_features"] and ok_psi["trip_distance"] < 0.05
    assert "trip_distance" in bad["drifted_features"] and bad_psi["trip_distance"] > 0.2
    assert PREDICTION in bad["drifted_features"]  # longer distances -> longer predicted trips
    assert bad["retrain"] and bad["verdict"] == "drift"
    # Features the shift did not touch stay quiet.
    assert bad_psi["PULocationID"] == pytest.approx(ok_psi["PULocationID"])


def test_mlflow_run_and_report_exist_and_render(settings, real_week):
    run = mlflow.get_run(real_week["mlflow_run_id"])
    assert run.data.params["week"] == "2023-W06"
    assert run.data.metrics["psi_trip_distance"] >= 0 and run.data.metrics["rmse"] > 0
    arts = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "report")]
    assert arts == ["report/2023-W06.html"]
    flag = json.loads((settings.reports_dir / "drift/green/2023-W06.json").read_text())
    assert flag["retrain"] is False and flag["verdict"] == "ok"

    chromium = require_chromium()
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", f"file://{real_week['report']}"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert "Verdict: <b>ok</b>" in dom and "trip_distance" in dom and dom.count("<img") >= 5
