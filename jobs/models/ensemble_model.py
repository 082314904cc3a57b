"""The ensemble's MLflow model, logged as code ("models from code"): the mean of its members' log1p(minutes).

Self-contained on purpose (mlflow, numpy and the boosters only): the file travels inside the logged model, so
``mlflow.pyfunc.load_model`` serves the ensemble anywhere without this project installed. The members are its
artifacts in their native flavours; ``model_config["features"]`` is the column order they were trained on.
"""

import json

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class MeanOfMembers(PythonModel):
    def load_context(self, context):
        with open(context.artifacts["members"]) as f:
            flavors = json.load(f)
        loaders = {"xgboost": mlflow.xgboost.load_model, "lightgbm": mlflow.lightgbm.load_model}
        self.members = [(flavor, loaders[flavor](context.artifacts[f"member_{i}"])) for i, flavor in enumerate(flavors)]
        self.features = list(context.model_config["features"])

    def predict(self, context, model_input, params=None):
        matrix = model_input[self.features].astype("float64").to_numpy(dtype=np.float32, na_value=np.nan)
        preds = [b.inplace_predict(matrix) if f == "xgboost" else b.predict(matrix) for f, b in self.members]
        return np.mean(np.asarray(preds, dtype="float64"), axis=0)


mlflow.models.set_model(MeanOfMembers())
