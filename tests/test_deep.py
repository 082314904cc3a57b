"""The deep tabular challenger (the ``[deep]`` extra: Keras 3 on JAX). `make test` does not install the extra, so
these tests skip there; `make test-deep` (run by CI after the other tiers) installs it and runs them."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

if importlib.util.find_spec("keras") is None or importlib.util.find_spec("jax") is None:
    if os.environ.get("TAXI_TEST_DEEP") == "required":  # `make test-deep`: a missing extra must fail, not skip
        raise RuntimeError("TAXI_TEST_DEEP=required but keras/jax are not installed: pip install -e '.[deep]'")
    pytest.skip(
        "the [deep] extra is not installed: `make test-deep` installs it and runs this", allow_module_level=True
    )

from jobs.models.inputs import MODEL_FEATURES  # noqa: E402
from jobs.platform.config import DeepConfig  # noqa: E402

DEFAULT_TIER = "integration"
N = len(MODEL_FEATURES)


def _matrix(rows: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    m = (rng.random((rows, N)) * 10).astype("float32")
    m[:, MODEL_FEATURES.index("PULocationID")] = rng.integers(1, 266, rows)
    m[:, MODEL_FEATURES.index("DOLocationID")] = rng.integers(1, 266, rows)
    return m


@pytest.mark.unit
def test_the_network_reads_nulls_and_unseen_codes_as_unknown_and_standardises_with_missing_flags():
    from jobs.training import deep

    k = deep.keras()
    assert k.backend.backend() == "jax"
    pu = MODEL_FEATURES.index("PULocationID")
    x = np.zeros((4, N), dtype="float32")
    x[:, pu] = [np.nan, 5, 265, 9999]
    index = deep._LAYERS["CategoryIndex"](pu, deep.ZONES)(x)
    assert np.asarray(index).tolist() == [0, 6, 266, 0]  # NaN and out of range share index 0; code c -> c + 1

    dist = MODEL_FEATURES.index("trip_distance")
    x = np.full((3, N), 1.0, dtype="float32")
    x[:, dist] = [np.nan, 0.0, np.e - 1]
    cols, logged, mean, std = deep.number_statistics(x)
    j = cols.index(dist)
    assert logged[j] and mean[j] == pytest.approx(0.5) and std[j] == pytest.approx(0.5)  # log1p: 0 and 1, NaN ignored
    out = np.asarray(deep._LAYERS["Standardize"](cols, logged, mean, std)(x))
    width = len(cols)
    assert out.shape == (3, 2 * width)
    assert out[:, j].tolist() == pytest.approx([0.0, -1.0, 1.0])  # missing -> 0 ...
    assert out[:, width + j].tolist() == [1.0, 0.0, 0.0]  # ... and flagged


@pytest.mark.unit
def test_the_network_round_trips_through_bytes_and_the_mlflow_keras_flavour(tmp_path):
    from jobs.models.flavors import NativeModel
    from jobs.training import deep

    deep.keras()  # first: it picks the JAX backend, which Keras reads once, at its first import (by mlflow.keras too)
    import mlflow.keras
    from mlflow.models import infer_signature

    x = _matrix(500)
    net = deep.build(DeepConfig(hidden=[16], zone_embedding=4), x, target_mean=2.5)
    want = np.asarray(net.predict(x, verbose=0), dtype="float64")
    assert want.shape == (500,) and np.all(np.isfinite(want))
    model = NativeModel.from_keras(net)
    np.testing.assert_allclose(model.predictor()(x), want, rtol=1e-6)
    mlflow.keras.save_model(net, str(tmp_path / "m"), signature=infer_signature(x, want))
    again = NativeModel.from_keras(mlflow.keras.load_model(str(tmp_path / "m")))
    np.testing.assert_allclose(again.predictor()(x), want, rtol=1e-6)


def test_deep_challenger_registers_only_through_the_gate_and_scores_on_the_arrow_path(spark, lake):
    import mlflow

    from jobs.models.inputs import PREDICTION
    from jobs.models.prediction import feature_matrix
    from jobs.models.registry import load_registered
    from jobs.platform import lakehouse
    from jobs.scoring import job as score
    from jobs.training import job as train

    s = lake.model_copy(deep=True)
    s.mlflow.registered_model_prefix = "deep-test"
    s.train.baselines, s.train.refit, s.train.warm_start, s.train.intervals.enabled = False, False, True, False
    s.train.deep = DeepConfig(max_rows=20000, epochs=4, hidden=[64, 32])
    s.train.learners = ["deep"]
    first = train.run(spark, s, "green", "2023-01", months=13)
    assert first["promoted"] and first["gate_reason"] == "first model"
    assert set(first["candidates"]) == {"deep-scratch"}
    model, mv = load_registered(s, "green", alias="champion")
    assert model.flavor == "keras" and mv.tags["flavor"] == "keras"
    assert mlflow.models.get_model_info(first["candidate_models"]["deep-scratch"]).flavors.keys() >= {"keras"}
    report = json.loads(open(first["bakeoff"].replace(".html", ".json")).read())
    (row,) = report["rows"]
    assert row["fit_info"]["sample_rows"] <= 20000 < row["fit_info"]["window_rows"]  # a bounded sample, said so
    assert row["trained"].startswith("driver, ") and row["metrics"]["rmse"] == pytest.approx(
        first["best_rmse"], abs=1e-4
    )
    assert row["predict_rows_per_s"] > 0 and row["model_bytes"] > 0

    # The Keras champion scores a new month through the same mapInArrow path as the boosters.
    scored = score.run(spark, s, "green", "2023-02")
    assert scored["model_version"] == int(mv.version) and scored["rows"] > 60000
    preds = lakehouse.read(spark, s, lakehouse.PREDICTIONS).where("month = '2023-02'").select("trip_id", PREDICTION)
    feats = lakehouse.read(spark, s, lakehouse.FEATURES).where("service = 'green' and month = '2023-02'")
    pdf = feats.join(preds, "trip_id").limit(2000).toPandas()
    want = np.clip(np.expm1(model.predictor()(feature_matrix(pdf))), 0, None)
    np.testing.assert_allclose(pdf[PREDICTION].to_numpy(), want, atol=6e-4)  # the table keeps 3 decimals

    # A booster beats it on a month neither saw (the gate re-scores the Keras champion), and takes the alias;
    # the champion is a network, so there is nothing to warm-start.
    s.train.learners = ["xgboost"]
    second = train.run(spark, s, "green", "2023-01", months=13)
    assert set(second["candidates"]) == {"xgboost-scratch"}
    assert second["champion_rmse_before"] == pytest.approx(first["best_rmse"], abs=1e-3)
    assert second["promoted"] and second["best_rmse"] < first["best_rmse"]
    # The network again, now against that champion: registered, rejected by the gate, the alias stays.
    s.train.learners, s.train.warm_start = ["deep"], False
    third = train.run(spark, s, "green", "2023-01", months=13)
    assert third["best_rmse"] == pytest.approx(first["best_rmse"], abs=1e-4)  # same seed, same sample, same network
    assert not third["promoted"] and third["champion_version"] == second["registered_version"]
    client = mlflow.MlflowClient()
    mv3 = client.get_model_version(s.registered_model("green"), str(third["registered_version"]))
    assert mv3.tags["gate"] == "rejected" and mv3.tags["flavor"] == "keras"
