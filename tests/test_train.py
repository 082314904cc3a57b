"""Training: quality on the real months, distributed learners, MLflow tracking, the registry gate, warm start,
scoring into gold and reading it as BI tools do."""

from __future__ import annotations

import json

import mlflow
import pytest
from deltalake import DeltaTable

from jobs.models.metrics import regression_metrics
from jobs.models.prediction import predict_minutes
from jobs.models.registry import load_registered
from jobs.platform import lakehouse
from jobs.platform.tracking import setup_mlflow
from jobs.training import candidates
from jobs.training import job as train

from .conftest import GOLDEN_WEEK, partition_rows, production

DEFAULT_TIER = "integration"  # tests without a tier marker of their own


def _child_runs(settings, parent_run_id):
    setup_mlflow(settings)
    exp = mlflow.get_experiment_by_name(settings.experiment("train-green"))
    runs = mlflow.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return {r["tags.mlflow.runName"]: r for _, r in runs.iterrows()}


def _rmse_on(spark, settings, model, month: str) -> dict[str, float]:
    feats = (
        lakehouse.read(spark, settings, lakehouse.FEATURES)
        .where(lakehouse.partition_predicate("green", month))
        .where("in_training_range")
    )
    return regression_metrics(predict_minutes(feats, model, ["duration_min"]))


@pytest.mark.slow
def test_quality_bar_production_settings_reach_3_85_min_rmse_on_the_next_month(spark, lake):
    """The profile's own settings (600 rounds, 255 leaves, refit), trained on months up to 2023-01 (validated on
    2023-01): RMSE on every 1-60 min trip of 2023-02, a month it never saw, must be <= 3.85 minutes (3.830 measured
    by `make demo`, which trains the same way)."""
    s = production(lake)
    s.mlflow.registered_model_prefix = "quality-bar"  # its own registry entry: a first model, no warm start
    s.train.intervals.enabled = False  # about the point model; the intervals' coverage is test_intervals.py's
    assert s.train.xgboost["n_estimators"] == 600 and s.train.lightgbm["numIterations"] == 600
    summary = train.run(spark, s, "green", "2023-01", months=13)
    assert summary["promoted"] and summary["gate_reason"] == "first model"
    cands = summary["candidates"]
    assert cands["baseline-zone-pair-median"] == pytest.approx(6.8, abs=0.4)  # reference: 7.02 on these months
    assert cands["baseline-linear-pu-do-distance"] == pytest.approx(5.9, abs=0.4)  # reference: 6.03
    assert min(cands["xgboost-scratch"], cands["lightgbm-scratch"]) < cands["baseline-linear-pu-do-distance"] - 1.5
    model, mv = load_registered(s, "green", alias="champion")
    m = _rmse_on(spark, s, model, "2023-02")
    print(f"\nchampion v{mv.version} ({mv.tags['candidate']}) on green 2023-02, 1-60 min: {m}")
    assert m["rmse"] <= 3.85 and m["n"] > 60000


def test_golden_training_window_split_and_candidates(golden):
    summary = golden.summaries["train"]
    assert summary["promoted"] and summary["gate_reason"] == "first model"
    assert summary["train_months"] == ["2022-01", "2022-02"] and summary["valid_month"] == "2023-01"
    cands = summary["candidates"]
    assert set(cands) == {
        "baseline-zone-pair-median",
        "baseline-linear-pu-do-distance",
        "xgboost-scratch",
        "lightgbm-scratch",
        "ensemble-mean",
    }
    # Even 60 rounds beat both baselines clearly on the validation month.
    assert max(cands["xgboost-scratch"], cands["lightgbm-scratch"]) < cands["baseline-linear-pu-do-distance"] - 1
    models = ("xgboost-scratch", "lightgbm-scratch", "ensemble-mean")
    assert summary["best_candidate"] == min(models, key=cands.get) + "-refit"
    champion, mv = load_registered(golden.settings, "green", alias="champion")
    flavors = {"xgboost-scratch": "xgboost", "lightgbm-scratch": "lightgbm", "ensemble-mean": "ensemble"}
    assert mv.tags["flavor"] == champion.flavor == flavors[min(models, key=cands.get)]


def test_the_ensemble_is_the_mean_of_each_learners_best_booster_on_the_log_scale(spark, golden):
    """Its RMSE is that of mean(log1p predictions) of its members, and the generic pyfunc loader (the code logged
    with the model, no project import) predicts the same mean."""
    import numpy as np

    from jobs.models.inputs import MODEL_FEATURES, TARGET
    from jobs.models.prediction import feature_matrix

    s, summary = golden.settings, golden.summaries["train"]
    runs = _child_runs(s, summary["run_id"])
    assert runs["ensemble-mean"]["params.hp_members"] == "xgboost-scratch,lightgbm-scratch"
    uris = summary["candidate_models"]
    setup_mlflow(s)
    pdf = (
        lakehouse.read(spark, s, lakehouse.FEATURES)
        .where(lakehouse.partition_predicate("green", "2023-01"))
        .where("in_training_range")
        .select(*MODEL_FEATURES, TARGET)
        .toPandas()
    )
    matrix = feature_matrix(pdf)
    xgb_log = mlflow.xgboost.load_model(uris["xgboost-scratch"]).inplace_predict(matrix)
    lgb_log = mlflow.lightgbm.load_model(uris["lightgbm-scratch"]).predict(matrix)
    mean_log = (np.asarray(xgb_log, dtype="float64") + lgb_log) / 2
    rmse = float(np.sqrt(np.mean((np.clip(np.expm1(mean_log), 0, None) - pdf[TARGET]) ** 2)))
    assert rmse == pytest.approx(summary["candidates"]["ensemble-mean"], abs=1e-3)
    assert rmse < max(summary["candidates"]["xgboost-scratch"], summary["candidates"]["lightgbm-scratch"])
    pyfunc = mlflow.pyfunc.load_model(uris["ensemble-mean"])
    assert pyfunc.metadata.flavors["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    np.testing.assert_allclose(
        pyfunc.predict(pdf[MODEL_FEATURES].astype("float64").head(500)), mean_log[:500], rtol=1e-5
    )


@pytest.mark.unit
def test_ensemble_members_are_each_learners_best_and_need_two_learners():
    from jobs.training.selection import Candidate, ensemble_members

    def cand(name, learner, rmse, model=True):
        return Candidate(name, learner, {"rmse": rmse}, 1.0, "run", model=object() if model else None)

    xs, xt = cand("xgboost-scratch", "xgboost", 4.2), cand("xgboost-tuned", "xgboost", 4.1)
    ls, lw = cand("lightgbm-scratch", "lightgbm", 4.0), cand("lightgbm-warm-start", "lightgbm", 4.3)
    base, net = cand("baseline", "baseline", 3.0, model=False), cand("deep-scratch", "deep", 3.5)
    assert ensemble_members([xs, xt, ls, lw, base, net]) == [xt, ls]  # per learner the best; baselines, network out
    assert ensemble_members([xs, xt, base, net]) == []  # one boosted learner: no ensemble


@pytest.mark.unit
def test_only_a_booster_champion_is_warm_started(settings):
    from jobs.models.flavors import NativeModel
    from jobs.platform.log import JobLog

    s = settings.model_copy(deep=True)
    s.train.warm_start, s.train.learners = True, ["xgboost"]
    ensemble = NativeModel.ensemble([NativeModel("xgboost", b""), NativeModel("lightgbm", "")])
    for champion in (ensemble, NativeModel("keras", b"")):
        plans = candidates.candidate_plans(s, None, "rows", champion, None, log=JobLog("train", "green", "2023-01"))
        assert [p[0] for p in plans] == ["xgboost-scratch"]


def test_both_learners_train_on_two_barrier_workers_and_log_everything(golden):
    s, summary = golden.settings, golden.summaries["train"]
    runs = _child_runs(s, summary["run_id"])
    for name in ("xgboost-scratch", "lightgbm-scratch"):
        r = runs[name]
        assert r["metrics.train_tasks"] == 2  # local[2]: one barrier task per worker
        for metric in ("rmse", "mae", "rmsle", "rmse_pu_borough_Manhattan", "rmse_hour_band_evening_peak"):
            assert r[f"metrics.{metric}"] > 0
        assert r["metrics.rmse"] == pytest.approx(summary["candidates"][name], abs=1e-4)
    parent = mlflow.get_run(summary["run_id"])
    # Everything needed to retrain: window, Delta version of the features, commit, hyperparameters.
    assert parent.data.params["features_delta_version"] == str(summary["features_version"])
    assert parent.data.params["train_months"] == "2022-01,2022-02"
    assert len(parent.data.tags["git_commit"]) >= 40
    assert runs["xgboost-scratch"]["params.hp_max_depth"] == str(s.train.xgboost["max_depth"])
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(runs["xgboost-scratch"]["run_id"], "plots")}
    assert arts == {"plots/feature_importance.png", "plots/residuals.png"}
    # The refit of the best learner is its own run, carrying the pre-refit (out-of-sample) metrics.
    refit = runs[summary["best_candidate"]]
    assert refit["metrics.prerefit_rmse"] == pytest.approx(summary["best_rmse"], abs=1e-4)


def test_registered_model_loads_without_training_code_and_has_a_signature(golden):
    setup_mlflow(golden.settings)
    uri = f"models:/{golden.settings.registered_model('green')}@champion"
    info = mlflow.models.get_model_info(uri)
    assert info.signature is not None and len(info.signature.inputs.inputs) == 29
    assert info.saved_input_example_info is not None
    pyfunc = mlflow.pyfunc.load_model(uri)  # generic loader: no project code involved
    example = pyfunc.input_example
    assert len(example) == 5 and len(pyfunc.predict(example)) == 5


@pytest.mark.unit
@pytest.mark.parametrize(
    "candidate, champion, margin, promoted, reason",
    [
        (5.0, None, 0.0, True, "first model"),
        (3.9, 4.0, 0.0, True, "rmse 3.9000 < champion 4.0000 - 0.0"),
        (4.0, 4.0, 0.0, False, "rmse 4.0000 does not beat champion v3 (4.0000) by margin 0.0 on 2023-01"),
        (3.95, 4.0, 0.1, False, "does not beat champion v3 (4.0000) by margin 0.1"),  # better, but within the margin
        (3.89, 4.0, 0.1, True, "< champion 4.0000 - 0.1"),
        (4.2, 4.0, 0.0, False, "does not beat"),
    ],
)
def test_gate_rule_promotes_only_a_strictly_better_candidate(candidate, champion, margin, promoted, reason):
    got, why = train.gate_decision(candidate, champion, margin, champion_version=3, valid_month="2023-01")
    assert got is promoted and reason in why


def _quick(settings, learners: list[str], trees: int, warm: bool = False):
    """One learner, no baselines, no refit, no intervals: a training run of seconds for the gate's mechanics."""
    s = settings.model_copy(deep=True)
    s.mlflow.registered_model_prefix = "gate-test"
    s.train.learners, s.train.baselines, s.train.refit, s.train.warm_start = learners, False, False, warm
    s.train.intervals.enabled = False
    s.train.xgboost = {**s.train.xgboost, "n_estimators": trees}
    return s


def test_gate_promotes_only_a_better_candidate(spark, lake):
    weak, strong = _quick(lake, ["xgboost"], 3), _quick(lake, ["xgboost"], 40)
    name = weak.registered_model("green")
    client = mlflow.MlflowClient(tracking_uri=lake.tracking_uri, registry_uri=lake.tracking_uri)

    first = train.run(spark, weak, "green", "2023-01", months=13)
    assert first["promoted"] and first["registered_version"] == 1 and first["gate_reason"] == "first model"

    better = train.run(spark, strong, "green", "2023-01", months=13)
    assert better["promoted"] and better["best_rmse"] < first["best_rmse"]
    assert better["champion_rmse_before"] == pytest.approx(first["best_rmse"], abs=1e-3)  # re-scored, same month
    assert int(client.get_model_version_by_alias(name, "champion").version) == better["registered_version"]

    worse = train.run(spark, weak, "green", "2023-01", months=13)
    assert not worse["promoted"] and worse["best_rmse"] == pytest.approx(first["best_rmse"], abs=1e-6)  # same seed
    mv = client.get_model_version(name, str(worse["registered_version"]))
    assert mv.tags["gate"] == "rejected" and "does not beat champion" in mv.tags["rejected_reason"]
    assert int(client.get_model_version_by_alias(name, "champion").version) == better["registered_version"]
    # The golden champion (another registered model in the same store) is untouched.
    golden_champion = client.get_model_version_by_alias(lake.registered_model("green"), "champion")
    assert golden_champion.tags["gate"] == "promoted"


@pytest.mark.parametrize("learner", ["xgboost", "lightgbm"])
def test_warm_start_continues_the_champion_on_months_it_has_not_seen(spark, lake, learner):
    s = _quick(lake, [learner], 20)
    s.train.lightgbm = {**s.train.lightgbm, "numIterations": 20}
    first = train.run(spark, s, "green", "2022-02", months=2)  # trained on 2022-01 (no refit), validated on 2022-02
    s.train.learners, s.train.warm_start = [], True  # only the continued champion
    second = train.run(spark, s, "green", "2023-01", months=13)
    warm = f"{learner}-warm-start"
    assert set(second["candidates"]) == {warm}
    # Continuing the champion on 2022-02, the one training month it has not seen: not worse than where it started.
    assert second["candidates"][warm] <= second["champion_rmse_before"] + 0.01
    assert _child_runs(s, second["run_id"])[warm]["tags.warm_start"] == "True"
    # Continued boosting: the warm model holds the champion's trees plus the new rounds.
    booster = (mlflow.xgboost if learner == "xgboost" else mlflow.lightgbm).load_model(second["candidate_models"][warm])
    trees = booster.num_boosted_rounds() if learner == "xgboost" else booster.num_trees()
    assert trees == 20 + s.train.warm_start_rounds
    assert first["registered_version"] == 1 and second["registered_version"] == 2


def test_a_window_the_champion_has_seen_registers_nothing_and_says_why(spark, lake):
    name = lake.registered_model("green")
    client = mlflow.MlflowClient(tracking_uri=lake.tracking_uri, registry_uri=lake.tracking_uri)
    again = train.run(spark, lake, "green", "2023-01", months=13)  # the golden champion was refit on 2023-01
    assert again["registered_version"] is None and not again["promoted"] and again["champion_version"] == 1
    assert "champion v1 has seen months through 2023-01" in again["skipped"] and "--force" in again["skipped"]
    assert [str(v.version) for v in client.search_model_versions(f"name = '{name}'")] == ["1"]


def test_registered_version_carries_its_facts_and_the_gate_report(golden):
    s, summary = golden.settings, golden.summaries["train"]
    client = golden.client()
    mv = client.get_model_version_by_alias(s.registered_model("green"), "champion")
    assert (mv.tags["train_months"], mv.tags["valid_month"], mv.tags["trained_through"]) == (
        "2022-01,2022-02",
        "2023-01",
        "2023-01",
    )
    assert mv.tags["features_version"] == str(summary["features_version"])
    assert float(mv.tags["val_rmse"]) == pytest.approx(summary["best_rmse"], abs=1e-4)  # pre-refit, out-of-sample
    assert {"val_mae", "val_rmsle", "val_bias", "val_rmse_pu_borough_Manhattan"} <= set(mv.tags)
    assert mv.tags["reference_profile"] == f"runs:/{summary['run_id']}/reference_profile.json"
    profile = mlflow.artifacts.load_dict(mv.tags["reference_profile"])
    assert profile["month"] == "2023-01"
    assert profile["performance"]["rmse"] == pytest.approx(summary["best_rmse"], abs=1e-4)
    report = mlflow.artifacts.load_dict(f"runs:/{summary['run_id']}/gate_report.json")
    assert (report["month"], report["passes"], report["champion"]) == ("2023-01", True, None)


def test_a_challenger_in_shadow_then_promote_forward_and_back_and_the_monitor_follows_the_scoring_version(spark, lake):
    from jobs.monitoring import job as monitor
    from jobs.platform.errors import InputError
    from jobs.promotion import job as promote
    from jobs.scoring import job as score
    from jobs.scoring import shadow

    name = lake.registered_model("green")
    client = mlflow.MlflowClient(tracking_uri=lake.tracking_uri, registry_uri=lake.tracking_uri)
    weak = _quick(lake, ["xgboost"], 3)
    weak.mlflow.registered_model_prefix = lake.mlflow.registered_model_prefix
    forced = train.run(spark, weak, "green", "2023-01", months=13, force=True)
    assert forced["registered_version"] == 2 and not forced["promoted"]  # 3 trees lose to the champion

    # v2 in shadow: scoring 2023-02 with the champion also scores the same trips with v2, into its own table.
    with pytest.raises(InputError, match="v1 is the champion"):
        shadow.run(lake, "green", version=1)
    assert shadow.run(lake, "green", version=2)["challenger_version"] == 2
    scored = score.run(spark, lake, "green", "2023-02")
    assert (scored["model_version"], scored["shadow"]["model_version"]) == (1, 2)
    champion_rows = partition_rows(lake, lakehouse.PREDICTIONS, "green", "2023-02")
    shadow_rows = partition_rows(lake, lakehouse.SHADOW_PREDICTIONS, "green", "2023-02")
    assert set(champion_rows.model_version) == {1} and set(shadow_rows.model_version) == {2}  # BI sees no shadow row
    assert sorted(champion_rows.trip_id) == sorted(shadow_rows.trip_id)
    assert list(shadow_rows.columns) == list(champion_rows.columns)
    assert shadow_rows.predicted_p10_min.isna().all()  # v2 was trained without intervals
    assert scored["shadow"]["rmse_in_training_range"] > scored["rmse_in_training_range"]  # 3 trees
    week = monitor.run(spark, lake, "green", GOLDEN_WEEK)
    both = week["shadow"]
    assert both["challenger_version"] == 2 and both["challenger_wins"] is False and both["known_rows"] > 1000
    assert both["champion"]["rmse"] == pytest.approx(week["performance"]["rmse"], abs=1e-6)  # the same trips
    assert both["challenger"]["rmse"] > both["champion"]["rmse"] and "coverage" not in both["challenger"]
    page = (lake.reports_dir / "drift" / "green" / f"{GOLDEN_WEEK}.html").read_text()
    assert "Shadow: challenger v2" in page and f"{both['challenger']['rmse']:.3f}" in page
    drift = DeltaTable(lakehouse.DRIFT.path(lake)).to_pandas()
    logged = drift[(drift.week == GOLDEN_WEEK) & (drift.feature == "_shadow")].set_index("metric").value
    assert logged["shadow_challenger_rmse"] == pytest.approx(both["challenger"]["rmse"])
    strict = lake.model_copy(deep=True)
    strict.train.promote_after_shadow_weeks = 1
    with pytest.raises(InputError, match=rf"v2 must win in shadow in each of the latest 1 .*{GOLDEN_WEEK}: v2 lost"):
        promote.run(spark, strict, "green", version=2)
    assert shadow.run(lake, "green", stop=True)["stopped_version"] == 2
    assert "shadow" not in score.run(spark, lake, "green", "2023-02")  # no challenger: the champion alone

    up = promote.run(spark, lake, "green", version=2)
    assert up["changed"] and (up["from_version"], up["champion_version"]) == (1, 2)
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"
    gate = up["gate_report"]
    # Both re-scored on 2023-02, the newest month neither has seen; the weaker version does not pass.
    assert gate["month"] == "2023-02" and gate["basis"].startswith("newest month") and not gate["passes"]
    assert gate["candidate"]["rmse"] > gate["champion"]["rmse"]

    # The week was scored by v1 before the promotion: it is judged against v1's profile, not the new champion's.
    week = monitor.run(spark, lake, "green", GOLDEN_WEEK)
    assert week["model_version"] == 1 and week["reference"]["month"] == "2023-01" and week["verdict"] == "ok"

    down = promote.run(spark, lake, "green", rollback=True)
    assert down["action"] == "rollback" and (down["from_version"], down["champion_version"]) == (2, 1)
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert down["gate_report"]["passes"] and down["gate_report"]["month"] == "2023-02"
    for r in (up, down):  # logged both ways
        logged = mlflow.artifacts.load_dict(f"runs:/{r['mlflow_run_id']}/gate_report.json")
        assert logged == json.loads(json.dumps(r["gate_report"]))
    again = promote.run(spark, lake, "green", version=1)
    assert not again["changed"]


@pytest.mark.unit
def test_promotion_after_shadow_needs_each_of_the_latest_weeks_won_by_that_version():
    import pandas as pd

    from jobs.monitoring.shadow_compare import weeks_won

    def week(w, version, wins):
        return [
            (w, "shadow_challenger_version", float(version)),
            (w, "shadow_challenger_wins", float(wins)),
            (w, "shadow_challenger_rmse", 4.0),
        ]

    rows = pd.DataFrame(
        week("2023-W05", 3, 0) + week("2023-W06", 4, 1) + week("2023-W07", 4, 1), columns=["week", "metric", "value"]
    )
    assert weeks_won(rows, 4, 2) == (True, "v4 won in shadow in each of the latest 2 weeks (2023-W06, 2023-W07)")
    enough, why = weeks_won(rows, 4, 3)
    assert not enough and "2023-W05: v3 lost, 2023-W06: v4 won, 2023-W07: v4 won" in why
    assert not weeks_won(rows, 3, 1)[0]  # the latest week was another version's
    assert not weeks_won(rows.iloc[:0], 4, 1)[0]


def test_training_without_enough_feature_months_fails_clearly(spark, golden):
    from jobs.platform.errors import MissingUpstream

    with pytest.raises(MissingUpstream, match=r"needs feature months for a train/validation split; found none"):
        train.run(spark, golden.settings, "yellow", "2019-05", months=3)
    with pytest.raises(MissingUpstream, match=r"found \['2023-02'\] in 2023-02..2023-02"):
        train.run(spark, golden.settings, "green", "2023-02", months=1)


@pytest.mark.unit
def test_the_deep_learner_without_its_extra_is_refused_before_training(settings, monkeypatch):
    import sys

    from jobs.platform.errors import InputError

    monkeypatch.setitem(sys.modules, "keras", None)  # what `import keras` meets without the [deep] extra
    s = settings.model_copy(deep=True)
    s.train.learners = ["xgboost", "deep"]
    with pytest.raises(InputError, match=r"pip install -e '\.\[deep\]'"):
        train.run(None, s, "green", "2023-01")  # refused before it touches Spark or MLflow


@pytest.mark.unit
def test_each_learner_gets_its_own_parameters_even_when_they_are_empty(settings):
    from jobs.training.learners import learner_params

    s = settings.model_copy(deep=True)
    s.train.xgboost = {}  # every xgboost default: must not fall through to another learner's settings
    assert learner_params(s, "xgboost") == {}
    assert learner_params(s, "lightgbm") == s.train.lightgbm
    assert learner_params(s, "deep")["max_rows"] == s.train.deep.max_rows
