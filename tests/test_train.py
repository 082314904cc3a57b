"""Training: quality on the real months, distributed learners, MLflow tracking, the registry gate, warm start."""

from __future__ import annotations

import mlflow
import pytest

from jobs import lakehouse, score, train
from jobs.modeling import load_registered, predict_minutes, regression_metrics, setup_mlflow

from .conftest import table_version


def _runs(settings, parent_run_id):
    setup_mlflow(settings)
    exp = mlflow.get_experiment_by_name(settings.experiment("train-green"))
    runs = mlflow.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return {r["tags.mlflow.runName"]: r for _, r in runs.iterrows()}


def test_champion_beats_the_baselines_and_reaches_4_min_rmse_on_the_next_month(spark, settings, trained_green):
    """Trained on months up to 2023-01; RMSE on all 2023-02 trips of 1-60 min must be <= 4.0 minutes."""
    assert trained_green["promoted"] and trained_green["gate_reason"] == "first model"
    assert trained_green["train_months"] == ["2022-01", "2022-02"] and trained_green["valid_month"] == "2023-01"
    cands = trained_green["candidates"]
    assert cands["baseline-zone-pair-median"] == pytest.approx(6.8, abs=0.4)  # reference: 7.02 on these months
    assert cands["baseline-linear-pu-do-distance"] == pytest.approx(5.9, abs=0.4)  # reference: 6.03
    assert min(cands["xgboost-scratch"], cands["lightgbm-scratch"]) < cands["baseline-linear-pu-do-distance"] - 0.5

    model, mv = load_registered(settings, "green", alias="champion")
    feb = (
        lakehouse.read(spark, settings, lakehouse.FEATURES)
        .where(lakehouse.partition_predicate("green", "2023-02"))
        .where("in_training_range")
    )
    m = regression_metrics(predict_minutes(feb, model, ["duration_min"]))
    print(f"\nchampion v{mv.version} ({mv.tags['candidate']}) on green 2023-02, 1-60 min: {m}")
    assert m["rmse"] <= 4.0
    assert m["n"] > 60000


def test_both_learners_train_on_two_barrier_workers_and_log_everything(settings, trained_green):
    runs = _runs(settings, trained_green["run_id"])
    for name in ("xgboost-scratch", "lightgbm-scratch"):
        r = runs[name]
        assert r["metrics.train_tasks"] == 2  # local[2]: one barrier task per worker
        for metric in ("rmse", "mae", "rmsle", "rmse_pu_borough_Manhattan", "rmse_hour_band_evening_peak"):
            assert r[f"metrics.{metric}"] > 0
    parent = mlflow.get_run(trained_green["run_id"])
    # Everything needed to retrain: window, Delta version of the features, commit, hyperparameters.
    assert parent.data.params["features_delta_version"] == str(trained_green["features_version"])
    assert parent.data.params["train_months"] == "2022-01,2022-02"
    assert len(parent.data.tags["git_commit"]) >= 40
    assert runs["xgboost-scratch"]["params.hp_max_depth"] == str(settings.train.xgboost["max_depth"])
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(runs["xgboost-scratch"]["run_id"], "plots")}
    assert arts == {"plots/feature_importance.png", "plots/residuals.png"}


def test_registered_model_loads_without_training_code_and_has_a_signature(settings, trained_green):
    name = settings.registered_model("green")
    uri = f"models:/{name}@champion"
    info = mlflow.models.get_model_info(uri)
    assert info.signature is not None and len(info.signature.inputs.inputs) == 29
    assert info.saved_input_example_info is not None
    pyfunc = mlflow.pyfunc.load_model(uri)  # generic loader: no project code involved
    example = pyfunc.input_example
    assert len(example) == 5 and len(pyfunc.predict(example)) == 5


def _small(settings, prefix: str, trees: int, warm: bool = False):
    s = settings.model_copy(deep=True)
    s.mlflow.registered_model_prefix = prefix
    s.train.xgboost = {**s.train.xgboost, "n_estimators": trees, "max_depth": 6}
    s.train.lightgbm = {**s.train.lightgbm, "numIterations": trees, "numLeaves": 31}
    s.train.refit = False
    s.train.warm_start = warm
    s.train.warm_start_rounds = 40
    return s


def test_gate_promotes_only_a_better_candidate_and_reruns_are_safe(spark, settings, green_history):
    weak, strong = _small(settings, "gate-test", 3), _small(settings, "gate-test", 40)
    name = weak.registered_model("green")
    client = mlflow.MlflowClient()

    first = train.run(spark, weak, "green", "2023-01", months=13)
    assert first["promoted"] and first["registered_version"] == 1

    better = train.run(spark, strong, "green", "2023-01", months=13)
    assert better["promoted"] and better["best_rmse"] < first["best_rmse"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == str(better["registered_version"])

    worse = train.run(spark, weak, "green", "2023-01", months=13)
    assert not worse["promoted"]
    mv = client.get_model_version(name, str(worse["registered_version"]))
    assert mv.tags["gate"] == "rejected" and "does not beat champion" in mv.tags["rejected_reason"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == str(better["registered_version"])

    rerun = train.run(spark, strong, "green", "2023-01", months=13)  # same data, same seed: not strictly better
    assert not rerun["promoted"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == str(better["registered_version"])


def test_warm_start_continues_the_champion_and_the_gate_chooses(spark, settings, green_history):
    s = _small(settings, "warm-test", 20)
    first = train.run(spark, s, "green", "2023-01", months=13)
    s.train.warm_start = True
    second = train.run(spark, s, "green", "2023-01", months=13)
    warm_name = f"{first['best_candidate'].split('-')[0]}-warm-start"
    assert warm_name in second["candidates"]
    # Continuing the champion must start from its predictions: the warm model is at least as good as a scratch one.
    scratch = min(v for k, v in second["candidates"].items() if k.endswith("-scratch"))
    assert second["candidates"][warm_name] < scratch * 1.1
    runs = _runs(settings, second["run_id"])
    assert runs[warm_name]["tags.warm_start"] == "True"
    # Continued boosting: the warm model holds the champion's trees plus the new rounds.
    model, _ = load_registered(s, "green", version=second["registered_version"])
    if second["best_candidate"] == warm_name:
        trees = model.booster().num_boosted_rounds() if model.flavor == "xgboost" else model.booster().num_trees()
        assert trees == 20 + 40


def test_training_without_enough_feature_months_fails_clearly(spark, settings):
    from jobs.errors import MissingUpstream

    with pytest.raises(MissingUpstream, match="needs feature months for a train/validation split"):
        train.run(spark, settings, "yellow", "2019-05", months=3)


def test_scoring_writes_one_row_per_validated_trip_with_the_champion_version(spark, settings, trained_green):
    from deltalake import DeltaTable

    first = score.run(spark, settings, "green", "2023-02")
    again = score.run(spark, settings, "green", "2023-02")
    pdf = DeltaTable(lakehouse.PREDICTIONS.path(settings)).to_pandas(
        filters=[("service", "=", "green"), ("month", "=", "2023-02")]
    )
    trips = DeltaTable(lakehouse.TRIPS.path(settings)).to_pandas(
        filters=[("service", "=", "green"), ("month", "=", "2023-02")], columns=["trip_id"]
    )
    assert len(pdf) == len(trips) == first["rows"] == again["rows"]
    assert pdf["trip_id"].is_unique and set(pdf["trip_id"]) == set(trips["trip_id"])
    champion = mlflow.MlflowClient().get_model_version_by_alias(settings.registered_model("green"), "champion")
    assert set(pdf["model_version"]) == {int(champion.version)}
    assert set(pdf["features_version"]) == {again["features_version"]}
    expected = {
        "trip_id", "pickup_datetime", "pickup_hour", "PULocationID", "DOLocationID", "pickup_zone", "dropoff_zone",
        "pickup_borough", "dropoff_borough", "trip_distance", "predicted_duration_min", "actual_duration_min",
        "in_training_range", "model_name", "model_version", "features_version", "scored_at", "scoring_run_id",
        "service", "month",
    }  # fmt: skip
    assert set(pdf.columns) == expected
    assert pdf["predicted_duration_min"].between(0, 300).all()
    assert again["rmse_in_training_range"] <= 4.0


def test_scoring_a_month_without_features_names_the_missing_stage(spark, settings, trained_green, capsys):
    from jobs.cli import main

    version = (
        table_version(settings, lakehouse.PREDICTIONS) if lakehouse.exists(settings, lakehouse.PREDICTIONS) else -1
    )
    rc = main(["score", "--service", "green", "--month", "2023-05"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 4
    assert "silver/features has no data for green 2023-05" in err and "taxi features" in err
    if version >= 0:
        assert table_version(settings, lakehouse.PREDICTIONS) == version


def test_bi_reads_predictions_with_duckdb_and_spark_sql(spark, settings, trained_green):
    import duckdb
    from deltalake import DeltaTable

    score.run(spark, settings, "green", "2023-02")
    arrow = DeltaTable(lakehouse.PREDICTIONS.path(settings)).to_pyarrow_dataset()
    con = duckdb.connect()
    con.register("predictions", arrow)
    q = """select pickup_borough, pickup_hour, count(*) n,
                  avg(predicted_duration_min) pred, avg(actual_duration_min) act
           from predictions where month = '2023-02' and in_training_range group by 1, 2 order by 1, 2"""
    rows = con.execute(q).fetchall()
    assert len(rows) > 24 and sum(r[2] for r in rows) > 60000
    lakehouse.register_tables(spark, settings)
    n = spark.sql("select count(*) from taxi.predictions where service = 'green' and month = '2023-02'").first()[0]
    assert (
        n
        == DeltaTable(lakehouse.PREDICTIONS.path(settings))
        .to_pandas(columns=["month"])
        .query("month == '2023-02'")
        .shape[0]
    )
