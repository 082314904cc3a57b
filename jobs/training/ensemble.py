"""The ensemble candidate in MLflow: a pyfunc logged as code (``ensemble_model.py``, loadable without this project)
whose artifacts are the members in their native flavours. The scoring job loads it member by member into the same
Arrow prediction path (``flavors.load_model``). Which members: ``selection.ensemble_members``."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..features import MODEL_FEATURES
from ..flavors import NativeModel, flavor_module, native_object, pinned_requirements

MODEL_CODE = Path(__file__).with_name("ensemble_model.py")


def log_ensemble(mlflow, model: NativeModel, input_example, signature) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = {}
        for i, member in enumerate(model.payload):
            path = os.path.join(tmp, f"member_{i}")
            module = flavor_module(member.flavor)
            # Pinned: left to infer them, MLflow imports each member in a Python subprocess (~10 s each here).
            module.save_model(native_object(member), path,
                              pip_requirements=pinned_requirements(*module.get_default_pip_requirements()))  # fmt: skip
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
