"""Compiled trees (lleaves): a version's LightGBM boosters compiled at registration predict what the boosters predict,
nulls included, on Spark's workers too; a library of another platform is never loaded; scoring finds them through
the registry."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.models import compiled
from jobs.models.flavors import NativeModel, cached_predictor
from jobs.models.inputs import MODEL_FEATURES
from jobs.models.interval import IntervalModel

DEFAULT_TIER = "unit"


def _rows(n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(MODEL_FEATURES))).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = np.nan  # nulls reach the trees as NaN, as in scoring
    x[:5] = np.nan  # whole rows of nulls take every default branch
    y = np.log1p(np.abs(np.nan_to_num(x[:, 0]) * 4 + np.nan_to_num(x[:, 1]) ** 2) + rng.random(n))
    return x, y


@pytest.fixture(scope="module")
def boosters():
    import lightgbm as lgb
    import xgboost as xgb

    x, y = _rows(4000, 1)
    params = {"num_leaves": 31, "learning_rate": 0.1, "verbose": -1, "num_threads": 1, "seed": 1}
    light = lgb.train({**params, "objective": "regression"}, lgb.Dataset(x, y), 40)
    lower = lgb.train({**params, "objective": "quantile", "alpha": 0.1}, lgb.Dataset(x, y), 20)
    upper = lgb.train({**params, "objective": "quantile", "alpha": 0.9}, lgb.Dataset(x, y), 20)
    extreme = xgb.train({"max_depth": 4, "nthread": 1}, xgb.DMatrix(x, y), 20)
    return {
        name: NativeModel.from_booster(b)
        for name, b in zip(("lgb", "lower", "upper", "xgb"), (light, lower, upper, extreme), strict=True)
    }


def _booster_predictions(model: NativeModel, x):
    return NativeModel(model.flavor, model.payload).predictor()(x)


def test_compiled_lightgbm_trees_predict_what_the_booster_does_nulls_included(boosters):
    x, _ = _rows(3000, 2)
    model = boosters["lgb"]
    library = compiled.compile_lightgbm(model.payload)
    with_library = NativeModel("lightgbm", model.payload, (compiled.host_platform(), library))
    predict = compiled.predictor(model.payload, compiled.host_platform(), library)
    assert predict is not None  # built here, for here
    np.testing.assert_allclose(predict(x), _booster_predictions(model, x), rtol=0, atol=1e-6)
    np.testing.assert_allclose(with_library.predictor()(x), _booster_predictions(model, x), rtol=0, atol=1e-6)
    # The per-process cache keeps the compiled predictor apart from the booster's of the same model.
    assert with_library.key != model.key and cached_predictor(with_library) is not cached_predictor(model)


def test_a_library_built_for_another_platform_is_not_loaded_and_the_booster_predicts(boosters):
    x, _ = _rows(500, 3)
    model = boosters["lgb"]
    elsewhere = "aarch64-unknown-linux-gnu/neoverse-v1/lleaves-1.3.0"
    assert compiled.host_platform() != elsewhere
    assert compiled.predictor(model.payload, elsewhere, b"not a library for this host") is None
    foreign = NativeModel("lightgbm", model.payload, (elsewhere, b"not a library for this host"))
    np.testing.assert_allclose(foreign.predictor()(x), _booster_predictions(model, x), rtol=0, atol=0)


def test_a_registered_versions_libraries_reach_every_lightgbm_booster_scoring_uses(boosters, tmp_path):
    """Registration compiles the ensemble's LightGBM member and both interval bounds (not the XGBoost member) into
    the run's artifacts on a real MLflow store; scoring's attach gives each its library, and a version tagged with
    another platform keeps its boosters and says why."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        _register_and_attach(mlflow, boosters)
    finally:
        mlflow.set_tracking_uri(previous)


def _register_and_attach(mlflow, boosters):
    from jobs.platform.log import JobLog
    from jobs.training.registration import compile_trees

    mlflow.set_experiment("compiled")
    ensemble = NativeModel.ensemble([boosters["xgb"], boosters["lgb"]])
    interval = IntervalModel(boosters["lower"], boosters["upper"], 0.0, 0.8, {})
    with mlflow.start_run():
        tags = compile_trees(mlflow, ensemble, interval, JobLog("train", "green", "2022-01"))
    assert tags["compiled_platform"] == compiled.host_platform()

    class Version:  # what attach reads of a ModelVersion: its tags
        def __init__(self, **tags):
            self.tags = tags

    loaded = NativeModel.ensemble([NativeModel(m.flavor, m.payload) for m in ensemble.members])
    bounds = IntervalModel(
        NativeModel("lightgbm", interval.lower.payload), NativeModel("lightgbm", interval.upper.payload), 0.0, 0.8, {}
    )
    said = compiled.attach(Version(**tags), loaded, bounds)
    assert said.startswith("compiled trees for 3 LightGBM booster(s)")
    assert [m.compiled is not None for m in loaded.members] == [False, True]
    assert bounds.lower.compiled is not None and bounds.upper.compiled is not None
    x, _ = _rows(2000, 4)
    np.testing.assert_allclose(loaded.predictor()(x), ensemble.predictor()(x), rtol=0, atol=1e-6)
    np.testing.assert_allclose(bounds.upper.predictor()(x), interval.upper.predictor()(x), rtol=0, atol=1e-6)

    other = NativeModel.ensemble([NativeModel(m.flavor, m.payload) for m in ensemble.members])
    said = compiled.attach(Version(**{**tags, "compiled_platform": "riscv64/generic/lleaves-1.3.0"}), other, None)
    assert "compiled for riscv64/generic" in said and all(m.compiled is None for m in other.members)
    assert compiled.attach(Version(), other, None).startswith("boosters (no compiled trees")


@pytest.mark.spark
def test_spark_workers_predict_with_the_compiled_trees_what_the_boosters_predict(spark, boosters):
    """The scoring path itself: the libraries travel to Spark's Python workers with the model, and the minutes and
    interval bounds they predict over Arrow batches equal the boosters' (nulls included)."""
    import pandas as pd

    from jobs.models.prediction import predict_minutes

    x, _ = _rows(3000, 5)
    pdf = pd.DataFrame(x.astype("float64"), columns=MODEL_FEATURES)
    pdf.insert(0, "trip_id", range(len(pdf)))
    df = spark.createDataFrame(pdf).repartition(3)

    def scored(model, interval):
        out = predict_minutes(df, model, ["trip_id"], interval=interval).toPandas()
        return out.sort_values("trip_id").set_index("trip_id")

    def compiled_copy(m: NativeModel) -> NativeModel:
        if m.flavor != "lightgbm":
            return NativeModel(m.flavor, m.payload)
        return NativeModel(m.flavor, m.payload, (compiled.host_platform(), compiled.compile_lightgbm(m.payload)))

    members = [boosters["xgb"], boosters["lgb"]]
    plain = scored(NativeModel.ensemble(members), IntervalModel(boosters["lower"], boosters["upper"], 0.05, 0.8, {}))
    with_libraries = scored(
        NativeModel.ensemble([compiled_copy(m) for m in members]),
        IntervalModel(compiled_copy(boosters["lower"]), compiled_copy(boosters["upper"]), 0.05, 0.8, {}),
    )
    assert len(plain) == len(x) and list(with_libraries.columns) == list(plain.columns)
    pd.testing.assert_frame_equal(with_libraries, plain, check_exact=False, rtol=0, atol=1e-6)
    # The workers did predict from the libraries: a member given another model's library predicts that model.
    swapped = compiled_copy(boosters["upper"]).compiled
    wrong = scored(NativeModel("lightgbm", boosters["lgb"].payload, swapped), None)
    right = scored(boosters["upper"], None)
    np.testing.assert_allclose(wrong["predicted_duration_min"], right["predicted_duration_min"], rtol=0, atol=1e-6)
