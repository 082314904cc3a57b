"""Monitoring: PSI/JS against hand-worked values; the rules at their boundaries; real weeks judged against the
out-of-sample profile of the version that scored them; drift, error and the N-of-M retrain rule on distorted weeks;
no training-window rows read; in-sample weeks get no verdict."""

from __future__ import annotations

import json
import math

import pytest
from deltalake import DeltaTable

from jobs.models import binning
from jobs.models.binning import MISSING, OTHER, BinSpec
from jobs.models.inputs import PREDICTION
from jobs.monitoring import job as monitor
from jobs.monitoring import stats, weeks
from jobs.monitoring.report import bin_labels, zone_names
from jobs.platform import lakehouse
from jobs.scoring import job as score

from .conftest import GOLDEN_WEEK, GOLDEN_WEEKS
from .processes import chromium_dom

DEFAULT_TIER = "integration"  # tests without a tier marker of their own


@pytest.mark.unit
def test_psi_by_hand():
    # shares (0.5, 0.5) -> (0.25, 0.75): (0.25-0.5)ln(0.5) + (0.75-0.5)ln(1.5) = 0.1733 + 0.1014 = 0.2747
    assert stats.psi([50, 50], [25, 75]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    assert stats.psi([50, 50], [25, 75]) == pytest.approx(0.2747, abs=1e-4)
    assert stats.psi([10, 20, 70], [1, 2, 7]) == pytest.approx(0.0)  # same shares, other totals
    # An empty bin is smoothed to 1e-4 instead of dividing by zero.
    smoothed = (0.5 - 1) * math.log(0.5) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    assert stats.psi([100, 0], [50, 50]) == pytest.approx(smoothed)


@pytest.mark.unit
def test_js_distance_by_hand():
    assert stats.js_distance([1, 0], [0, 1]) == pytest.approx(1.0)  # disjoint: the maximum, base 2
    assert stats.js_distance([3, 7], [3, 7]) == pytest.approx(0.0)
    # P=(1,0), Q=(0.5,0.5): M=(0.75,0.25); KL(P|M)=log2(4/3); KL(Q|M)=0.5log2(2/3)+0.5log2(2)
    jsd = (math.log2(4 / 3) + 0.5 * math.log2(2 / 3) + 0.5) / 2
    assert stats.js_distance([2, 0], [1, 1]) == pytest.approx(math.sqrt(jsd))


@pytest.mark.spark
def test_bins_come_from_the_reference_and_count_missing_separately(spark):
    ref = spark.createDataFrame([(float(i),) for i in range(100)] + [(None,)], "x double")
    spec = BinSpec("x", "continuous", edges=[24.0, 49.0, 74.0])
    counts = binning.binned_counts(ref, [spec])["x"]
    assert counts == {0: 25, 1: 25, 2: 25, 3: 25, MISSING: 1}
    cur = spark.createDataFrame([(1000.0,)] * 10, "x double")  # far outside the reference: all in the last bin
    assert binning.binned_counts(cur, [spec])["x"] == {3: 10}


# Ten judged continuous features f0..f9 (PSI decides), one categorical c0 (JS decides), one calendar feature.
SPECS = [BinSpec(f"f{i}", "continuous", edges=[1.0]) for i in range(10)] + [
    BinSpec("c0", "categorical", categories=[1.0]),
    BinSpec("pickup_hour", "continuous", edges=[12.0]),
    BinSpec(PREDICTION, "continuous", edges=[10.0]),
]
PRESENT = {s.feature: {0: 100, 1: 100} for s in SPECS}


def _judge(settings, psi: dict[str, float] | None = None, js: dict[str, float] | None = None, ref_counts=None):
    psi, js = psi or {}, js or {}
    records = [{"feature": s.feature, "metric": "psi", "value": psi.get(s.feature, 0.01)} for s in SPECS] + [
        {"feature": s.feature, "metric": "js_distance", "value": js.get(s.feature, 0.01)} for s in SPECS
    ]
    return stats.judge_features(SPECS, records, ref_counts or PRESENT, settings)


@pytest.mark.unit
def test_one_rule_per_feature_type_and_features_that_do_not_count(settings):
    m = settings.monitor
    assert (m.psi_threshold, m.js_threshold, m.share_of_drifted_features) == (0.2, 0.1, 0.3)
    j = {x["feature"]: x for x in _judge(settings, psi={"f0": 0.5, "c0": 0.9, "pickup_hour": 3.0}, js={"f1": 0.9})}
    assert j["f0"]["rule"] == "psi" and j["f0"]["fired"]
    assert not j["f1"]["fired"]  # JS does not decide for a continuous feature
    assert j["c0"]["rule"] == "js_distance" and not j["c0"]["fired"]  # PSI does not decide for a categorical one
    assert j["pickup_hour"]["fired"] and not j["pickup_hour"]["counts"] and j["pickup_hour"]["excluded"] == "calendar"
    # A feature mostly missing in the reference (a month without history) is shown, not judged.
    mostly_missing = {**PRESENT, "f2": {0: 10, MISSING: 90}}
    f2 = {x["feature"]: x for x in _judge(settings, psi={"f2": 5.0}, ref_counts=mostly_missing)}["f2"]
    assert f2["fired"] and not f2["counts"] and f2["excluded"] == "90% missing in the reference"


@pytest.mark.unit
def test_verdict_share_boundary_key_features_and_predictions(settings):
    settings = settings.model_copy(deep=True)
    settings.monitor.key_features = ["f9"]
    ref = {"rmse": 4.0}
    # 3 of 11 judged features (f0, f1 by PSI, c0 by JS): 27% < 30%, ok; the calendar feature does not count.
    three = stats.verdict(_judge(settings, {"f0": 0.21, "f1": 0.3, "pickup_hour": 9}, {"c0": 0.11}), {}, ref, settings)
    assert (three["verdict"], three["drifted_features"], three["drifted_share"]) == ("ok", ["c0", "f0", "f1"], 0.2727)
    four = stats.verdict(_judge(settings, {"f0": 0.21, "f1": 0.3, "f2": 0.3}, {"c0": 0.11}), {}, ref, settings)
    assert four["verdict"] == "drift" and four["drifted_share"] == 0.3636
    # A value equal to its threshold is not over it.
    assert stats.verdict(_judge(settings, {"f0": 0.2}, {"c0": 0.1}), {}, ref, settings)["drifted_features"] == []
    key = stats.verdict(_judge(settings, {"f9": 0.25}), {}, ref, settings)
    assert key["verdict"] == "drift" and key["reasons"] == ["key feature drifted: f9"]
    preds = stats.verdict(_judge(settings, {PREDICTION: 0.25}), {}, ref, settings)
    assert (preds["verdict"], preds["drifted_features"], preds["drifted_share"]) == ("drift", [PREDICTION], 0.0)


@pytest.mark.unit
def test_accuracy_rule_is_relative_to_the_reference_with_an_absolute_ceiling(settings):
    m = settings.monitor
    assert (m.rmse_ratio, m.rmse_threshold) == (1.25, 8.0)
    assert stats.rmse_limit({"rmse": 4.0}, settings) == pytest.approx(5.0)
    assert stats.rmse_limit({"rmse": 7.0}, settings) == pytest.approx(8.0)  # capped by the ceiling
    assert stats.rmse_limit({}, settings) == pytest.approx(8.0)
    judged = _judge(settings, {PREDICTION: 0.25})
    assert stats.verdict(judged, {"rmse": 5.01}, {"rmse": 4.0}, settings)["verdict"] == "error"  # outranks drift
    assert stats.verdict(_judge(settings), {"rmse": 5.0}, {"rmse": 4.0}, settings)["verdict"] == "ok"  # at the limit
    assert stats.verdict(_judge(settings), {}, {"rmse": 4.0}, settings)["verdict"] == "ok"  # no known durations yet
    inside = stats.verdict(judged, {"rmse": 9.0}, {"rmse": 4.0}, settings, in_sample=True)
    assert inside["verdict"] == "in_sample"
    # The prediction intervals' coverage: a breach outside [0.75, 0.85], the bounds themselves allowed.
    assert (m.coverage_min, m.coverage_max) == (0.75, 0.85)
    for coverage, expected in ((0.7499, "error"), (0.75, "ok"), (0.85, "ok"), (0.8501, "error")):
        week = stats.verdict(_judge(settings), {"rmse": 4.0, "coverage": coverage}, {"rmse": 4.0}, settings)
        assert week["verdict"] == expected, (coverage, week)
    assert (
        "interval coverage 0.700 outside [0.75, 0.85]"
        in stats.verdict(_judge(settings), {"rmse": 4.0, "coverage": 0.7}, {"rmse": 4.0}, settings)["reasons"]
    )


@pytest.mark.unit
def test_retrain_needs_drift_in_two_of_the_last_three_weeks_and_an_error_at_once(settings):
    def decide(week, earlier):
        return stats.retrain_decision(week, earlier, settings)[0]

    assert not decide("drift", ["none", "none"])  # one drifted week alone
    assert decide("drift", ["ok", "drift"]) and decide("drift", ["drift", "ok"])  # two of the last three
    assert not decide("drift", ["ok", "ok"])
    assert not decide("ok", ["drift", "drift"])  # nothing new this week: the earlier weeks already asked
    assert decide("error", ["none", "none"])
    assert not decide("in_sample", ["drift", "drift"])


@pytest.mark.unit
def test_bins_are_labelled_with_edges_zone_names_other_and_missing(settings):
    zones = zone_names(settings.data.zone_lookup)
    assert zones[132] == "JFK Airport (Queens)"
    cont = BinSpec("trip_distance", "continuous", edges=[1.0, 2.5])
    assert bin_labels(cont, zones) == ["<= 1", "1 - 2.5", "> 2.5", "missing"]
    cat = BinSpec("PULocationID", "categorical", categories=[132.0, 74.0])
    assert cat.labels() == [0, 1, OTHER, MISSING]
    assert bin_labels(cat, zones) == ["JFK Airport (Queens)", "East Harlem North (Manhattan)", "other", "missing"]
    assert bin_labels(BinSpec("pu_borough_code", "categorical", categories=[3.0]), zones)[0] == "Manhattan"


def test_every_complete_week_of_the_next_month_is_ok_against_the_out_of_sample_reference(golden):
    s = golden.settings
    champion = golden.client().get_model_version_by_alias(s.registered_model("green"), "champion")
    val_rmse = float(champion.tags["val_rmse"])
    training = golden.client().get_run(champion.tags["training_run_id"])
    assert val_rmse == pytest.approx(training.data.metrics["rmse"], abs=1e-4)  # the pre-refit model, 2023-01
    for week in GOLDEN_WEEKS:
        summary = golden.summaries[f"monitor {week}"]
        assert (summary["week"], summary["verdict"], summary["retrain"], summary["drifted_features"]) == (
            week,
            "ok",
            False,
            [],
        )
        assert summary["reference"]["month"] == "2023-01" and summary["model_version"] == int(champion.version)
        assert summary["reference_performance"]["rmse"] == pytest.approx(val_rmse, abs=0.01)
        assert summary["reference_performance"]["rmse"] > 3.5
        assert 2.0 < summary["performance"]["rmse"] < summary["rmse_limit"]
        assert 10000 < summary["current_rows"] < 20000 and summary["known_rows"] <= summary["current_rows"]
        perf = summary["performance"]  # the 80% intervals hold in every week of the month after calibration
        assert 0.75 <= perf["coverage"] <= 0.85 and 5 < perf["interval_width"] < 40, perf
        assert perf["coverage_pu_borough_Manhattan"] > 0 and "coverage" not in summary["reference_performance"]
        flag = json.loads((s.reports_dir / f"drift/green/{week}.json").read_text())
        assert set(monitor.SUMMARY_KEYS) <= set(flag) and flag["performance"]["rmse"] == summary["performance"]["rmse"]
    week = golden.summaries["monitor"]
    # Calendar and pipeline-state features are reported but not judged.
    assert {f for f, j in week["features"].items() if not j["counts"]} >= stats.CALENDAR | stats.PIPELINE_STATE
    assert week["features"]["trip_distance"]["value"] < 0.05 and week["features"]["trip_distance"]["rule"] == "psi"


def test_the_drift_table_holds_every_metric_with_its_rule_and_threshold(golden):
    s, week = golden.settings, golden.summaries["monitor"]
    drift = DeltaTable(lakehouse.DRIFT.path(s)).to_pandas()
    assert set(drift.week) == set(GOLDEN_WEEKS) and drift.groupby("week").run_id.nunique().eq(1).all()
    rows = drift[(drift.service == "green") & (drift.week == GOLDEN_WEEK)]
    assert {"psi", "js_distance", "ks", "wasserstein", "rmse", "mae", "bias", "reference_rmse"} <= set(rows.metric)
    rule_rows = rows[rows.threshold.notna() & (rows.feature != "_performance")]
    assert set(rule_rows.feature) == set(week["features"]) and rule_rows.feature.is_unique
    assert set(rows[rows.judged].feature) == {f for f, j in week["features"].items() if j["counts"]}
    assert set(rows.reference_months) == {"2023-01"} and set(rows.verdict) == {"ok"}
    limit = rows[(rows.feature == "_performance") & (rows.metric == "rmse")].threshold.item()
    assert limit == pytest.approx(week["rmse_limit"])


def _distort(spark, settings):
    """Green 2023-02 with trip_distance x 1.5 on days 6-19 (weeks 6 and 7) in the features, and the stored
    predictions inflated by 30% on days 20-26 (week 8)."""
    from pyspark.sql import functions as F

    day = F.dayofmonth("pickup_datetime")
    feats = lakehouse.read_partition(spark, settings, lakehouse.FEATURES, "green", "2023-02")
    longer = feats.withColumn(
        "trip_distance", F.when(day.between(6, 19), F.col("trip_distance") * 1.5).otherwise(F.col("trip_distance"))
    ).localCheckpoint()
    lakehouse.replace_partition(longer, settings, lakehouse.FEATURES, "test-distort", "green", "2023-02")
    preds = lakehouse.read_partition(spark, settings, lakehouse.PREDICTIONS, "green", "2023-02")
    inflated = preds.withColumn(
        PREDICTION, F.when(day.between(20, 26), F.col(PREDICTION) * 1.3).otherwise(F.col(PREDICTION))
    ).localCheckpoint()
    lakehouse.replace_partition(inflated, settings, lakehouse.PREDICTIONS, "test-inflate", "green", "2023-02")


def test_distorted_weeks_drift_then_retrain_and_inflated_predictions_are_an_error(spark, lake):
    _distort(spark, lake)
    first, second, third = (monitor.run(spark, lake, "green", w) for w in GOLDEN_WEEKS)
    assert first["verdict"] == "drift" and "trip_distance" in first["drifted_features"]
    assert first["features"]["trip_distance"]["value"] > 0.2
    assert not first["retrain"] and first["retrain_reason"] == "drift in 1 of the last 3 weeks (needs 2)"
    assert second["verdict"] == "drift" and second["retrain"]
    assert second["retrain_reason"] == "drift in 2 of the last 3 weeks"
    assert third["verdict"] == "error" and third["retrain"] and third["retrain_reason"] == "accuracy breach"
    assert (
        third["performance"]["rmse"]
        > third["rmse_limit"]
        == pytest.approx(1.25 * third["reference_performance"]["rmse"])
    )


def test_monitoring_reads_no_training_window_rows_and_in_sample_weeks_get_no_verdict(spark, lake, golden):
    # A week of 2023-01, the month the champion was validated and then refit on: reported, not judged.
    score.run(spark, lake, "green", "2023-01")
    inside = monitor.run(spark, lake, "green", "2023-W02")
    assert (
        inside["verdict"] == "in_sample"
        and not inside["retrain"]
        and inside["reference"]["trained_through"] == ("2023-01")
    )
    # Delete every training-window month from the features: the week's report does not change.
    for month in ("2022-01", "2022-02", "2023-01"):
        spark.sql(f"DELETE FROM delta.`{lakehouse.FEATURES.path(lake)}` WHERE service = 'green' AND month = '{month}'")
    again = monitor.run(spark, lake, "green", GOLDEN_WEEK)
    before = golden.summaries["monitor"]
    assert again["features"] == before["features"] and again["performance"] == before["performance"]


def test_mlflow_run_and_report_exist(golden):
    week = golden.summaries["monitor"]
    run = golden.client().get_run(week["mlflow_run_id"])
    assert run.data.params["week"] == GOLDEN_WEEK and run.data.tags["verdict"] == week["verdict"]
    assert run.data.params["reference_month"] == "2023-01"
    assert run.data.metrics["psi_trip_distance"] >= 0
    assert run.data.metrics["rmse"] == pytest.approx(week["performance"]["rmse"])
    assert run.data.metrics["reference_rmse"] == pytest.approx(week["reference_performance"]["rmse"])
    arts = [a.path for a in golden.client().list_artifacts(run.info.run_id, "report")]
    assert arts == [f"report/{GOLDEN_WEEK}.html"]


@pytest.mark.slow
def test_report_renders_in_chromium_without_network(golden):
    week = golden.summaries["monitor"]
    dom = chromium_dom(f"file://{week['report']}")
    assert "Verdict: <b>ok</b>" in dom and dom.count("<img") >= 8
    assert "Reference (out-of-sample): 2023-01" in dom and week["mlflow_run_id"] in dom
    assert "no: calendar" in dom and "no: pipeline state" in dom and "psi &gt; 0.2" in dom


@pytest.mark.unit
def test_complete_weeks_need_every_day_scored():
    assert weeks.complete_weeks(["2023-02"]) == ["2023-W06", "2023-W07", "2023-W08"]  # W05 and W09 span two months
    assert "2023-W05" in weeks.complete_weeks(["2023-01", "2023-02"])  # Jan 30 - Feb 5: both months scored
    assert weeks.complete_weeks(["2022-12", "2023-01"])[:2] == ["2022-W49", "2022-W50"]  # Dec 1 is a Thursday
    assert "2022-W52" in weeks.complete_weeks(["2022-12", "2023-01"])  # Dec 26 - Jan 1
    assert weeks.complete_weeks([]) == []


def test_pending_reports_exactly_the_missing_complete_weeks_and_a_rerun_adds_nothing(
    spark, lake, cli_lakehouse, capsys
):
    from jobs.entry.cli import main

    spark.sql(f"DELETE FROM delta.`{lakehouse.DRIFT.path(lake)}` WHERE week IN ('2023-W07', '2023-W08')")
    first = monitor.run_pending(spark, lake, "green")
    assert list(first["weeks"]) == ["2023-W07", "2023-W08"] and not first["retrain"]
    assert {w["verdict"] for w in first["weeks"].values()} == {"ok"}
    weeks = set(DeltaTable(lakehouse.DRIFT.path(lake)).to_pandas().week)
    assert weeks == set(GOLDEN_WEEKS)  # none for 2023-W05 or 2023-W09, whose other month is not scored
    cli_lakehouse(lake)
    capsys.readouterr()
    assert main(["monitor", "--service", "green", "--pending"]) == 0  # the same lakehouse, through the CLI
    out = json.loads(capsys.readouterr().out)
    assert out["weeks"] == {} and out["message"].startswith("nothing to monitor")


@pytest.mark.spark
def test_pending_on_an_empty_lakehouse_is_a_success(spark, empty_lake):
    result = monitor.run_pending(spark, empty_lake, "green")
    assert result["weeks"] == {} and result["retrain"] is False and "nothing to monitor" in result["message"]
