"""Model flavours: how each kind of trained model travels to executors, predicts, and goes in and out of MLflow.

Every model predicts ``log1p(minutes)`` from the float32 matrix of ``MODEL_FEATURES`` (nulls as NaN), so training,
the gate, shadow scoring and batch scoring share one Arrow prediction path whatever the flavour:

- ``xgboost`` / ``lightgbm``: a Booster, logged in its native MLflow flavour;
- ``keras``: the deep tabular challenger (:mod:`jobs.training.deep`, the ``[deep]`` extra), native ``mlflow.keras``;
- ``ensemble``: the mean of boosters on the log scale, an MLflow pyfunc logged as code whose artifacts are the
  members in their own native flavours (``mlflow.pyfunc`` serves it; here it is loaded member by member).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.models.inputs import MODEL_FEATURES

BOOSTERS = ("xgboost", "lightgbm")


@dataclass
class NativeModel:
    """A trained model in a form that travels to executors (bytes/str) and predicts log1p(minutes)."""

    flavor: str  # "xgboost" | "lightgbm" | "keras" | "ensemble"
    payload: Any  # xgboost: UBJSON bytes; lightgbm: model string; keras: .keras file bytes; ensemble: members
    # lightgbm: (platform, native library) from jobs.models.compiled, used where the process runs on that platform
    compiled: tuple[str, bytes] | None = None

    @classmethod
    def from_booster(cls, booster) -> NativeModel:
        import xgboost as xgb

        if isinstance(booster, xgb.Booster):
            return cls("xgboost", bytes(booster.save_raw("ubj")))
        return cls("lightgbm", booster.model_to_string())

    @classmethod
    def from_keras(cls, network) -> NativeModel:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.keras"
            network.save(path)
            return cls("keras", path.read_bytes())

    @classmethod
    def ensemble(cls, members: list[NativeModel]) -> NativeModel:
        return cls("ensemble", tuple(members))

    def booster(self):
        if self.flavor == "xgboost":
            import xgboost as xgb

            b = xgb.Booster()
            b.load_model(bytearray(self.payload))
            b.set_param({"nthread": 1})
            return b
        if self.flavor == "lightgbm":
            import lightgbm as lgb

            return lgb.Booster(model_str=self.payload)
        raise TypeError(f"a {self.flavor} model has no booster")

    def keras_model(self):
        from jobs.models.keras_network import keras  # registers the network's layers before loading

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.keras"
            path.write_bytes(self.payload)
            return keras().saving.load_model(path)

    def predictor(self):
        """A function float32 matrix -> log1p(minutes) as float64, built once (per Python worker)."""
        import numpy as np

        if self.flavor == "ensemble":
            members = [m.predictor() for m in self.payload]
            return lambda matrix: np.mean([p(matrix) for p in members], axis=0)
        if self.flavor == "keras":
            network = self.keras_model()
            return lambda matrix: np.asarray(
                network.predict(matrix, batch_size=8192, verbose=0), dtype="float64"
            ).reshape(-1)
        if self.compiled is not None:
            from jobs.models.compiled import predictor

            compiled = predictor(self.payload, *self.compiled)
            if compiled is not None:
                return compiled
        booster, flavor = self.booster(), self.flavor
        return lambda matrix: np.asarray(predict_log(booster, flavor, matrix), dtype="float64")

    @property
    def key(self) -> tuple:
        """Identifies the model by content (a digest of its payload), for the per-process predictor cache."""
        if self.flavor == "ensemble":
            return (self.flavor, *(m.key for m in self.payload))
        data = self.payload.encode() if isinstance(self.payload, str) else bytes(self.payload)
        return (self.flavor, hashlib.blake2b(data, digest_size=16).hexdigest(), self.compiled is not None)

    @property
    def size_bytes(self) -> int:
        if self.flavor == "ensemble":
            return sum(m.size_bytes for m in self.payload)
        return len(self.payload.encode() if isinstance(self.payload, str) else self.payload)

    @property
    def members(self) -> list[NativeModel]:
        return list(self.payload) if self.flavor == "ensemble" else [self]


_PREDICTORS: dict[tuple, Any] = {}


def cached_predictor(model: NativeModel):
    """``model.predictor()``, built once per process: Spark reuses its Python workers across tasks, and parsing a
    booster (or loading and compiling the network) for every partition costs more than predicting it."""
    key = model.key
    if key not in _PREDICTORS:
        if len(_PREDICTORS) >= 4:  # a scoring run holds at most the model, a shadow and two interval bounds
            _PREDICTORS.pop(next(iter(_PREDICTORS)))
        _PREDICTORS[key] = model.predictor()
    return _PREDICTORS[key]


def predict_log(booster, flavor: str, matrix):
    if flavor == "xgboost":
        return booster.inplace_predict(matrix)
    return booster.predict(matrix, num_threads=1)


# ---------------------------------------------------------------------------------------------------------------
# MLflow
# ---------------------------------------------------------------------------------------------------------------
def pinned_requirements(*extra: str) -> list[str]:
    # Pinned from this environment: letting MLflow infer them starts a Python subprocess per logged model (seconds).
    import numpy as np
    import pandas as pd

    return [*extra, f"numpy=={np.__version__}", f"pandas=={pd.__version__}"]


def flavor_module(flavor: str):
    """The MLflow module that logs and loads ``flavor`` natively."""
    if flavor == "keras":
        from jobs.models.keras_network import keras

        keras()  # picks the JAX backend before mlflow.keras imports keras
        import mlflow.keras

        return mlflow.keras
    import mlflow

    return mlflow.xgboost if flavor == "xgboost" else mlflow.lightgbm


def from_native(flavor: str, native) -> NativeModel:
    return NativeModel.from_keras(native) if flavor == "keras" else NativeModel.from_booster(native)


def native_object(model: NativeModel):
    return model.keras_model() if model.flavor == "keras" else model.booster()


def log_model(mlflow, model: NativeModel, input_example, matrix_of) -> str:
    """Log ``model`` with signature and input example in its flavour (see the module doc); returns the model URI."""
    from mlflow.models import infer_signature

    if model.flavor == "keras":  # mlflow.keras wants tensor signatures: the network's float32 matrix itself
        input_example = matrix_of(input_example)
        signature = infer_signature(input_example, model.predictor()(input_example))
    else:
        signature = infer_signature(input_example, model.predictor()(matrix_of(input_example)))
    if model.flavor == "ensemble":
        return log_ensemble(mlflow, model, input_example, signature)
    module = flavor_module(model.flavor)
    # mlflow.keras (3.17) writes the input example before it creates the model folder and fails: the signature stays.
    example = None if model.flavor == "keras" else input_example
    info = module.log_model(
        native_object(model),
        name="model",
        signature=signature,
        input_example=example,
        pip_requirements=pinned_requirements(*module.get_default_pip_requirements()),
    )
    return info.model_uri


def load_model(uri: str, flavor: str | None) -> NativeModel:
    """The registered model at ``uri`` (``models:/name/version``) as a NativeModel; ``flavor`` is its ``flavor`` tag."""
    if flavor == "ensemble":
        return load_ensemble(uri)
    return from_native(flavor, flavor_module(flavor).load_model(uri))


MODEL_CODE = Path(__file__).with_name("ensemble_model.py")


def log_ensemble(mlflow, model: NativeModel, input_example, signature) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = {}
        for i, member in enumerate(model.payload):
            path = os.path.join(tmp, f"member_{i}")
            module = flavor_module(member.flavor)
            # Pinned: left to infer them, MLflow imports each member in a Python subprocess (~10 s each here).
            module.save_model(
                native_object(member),
                path,
                pip_requirements=pinned_requirements(*module.get_default_pip_requirements()),
            )
            artifacts[f"member_{i}"] = path
        artifacts["members"] = os.path.join(tmp, "members.json")
        Path(artifacts["members"]).write_text(json.dumps([m.flavor for m in model.payload]))
        needs = {r for m in model.payload for r in flavor_module(m.flavor).get_default_pip_requirements()}
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts=artifacts,
            model_config={"features": MODEL_FEATURES},
            signature=signature,
            input_example=input_example,
            pip_requirements=pinned_requirements(*sorted(needs)),
        )
    return info.model_uri


def load_ensemble(uri: str) -> NativeModel:
    import mlflow

    members = mlflow.pyfunc.load_model(uri).unwrap_python_model().members
    return NativeModel.ensemble([NativeModel.from_booster(booster) for _, booster in members])
