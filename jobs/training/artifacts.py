"""What a training run logs to MLflow besides metrics: the git commit, importance and residual plots, and the
booster in its native flavour with signature, input example and pinned requirements."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from jobs.models.flavors import BOOSTERS, NativeModel, log_model
from jobs.models.inputs import MODEL_FEATURES, PREDICTION, TARGET
from jobs.platform.config import PROJECT_ROOT


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=PROJECT_ROOT, capture_output=True, text=True)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def _importance(model: NativeModel) -> dict[str, float]:
    booster = model.booster()
    if model.flavor == "xgboost":
        return {k: float(v) for k, v in booster.get_score(importance_type="gain").items()}
    return {n: float(v) for n, v in zip(MODEL_FEATURES, booster.feature_importance("gain"), strict=True)}


def log_plots(mlflow, model: NativeModel | None, sample, name: str) -> None:
    """Feature importance (gain) and residual plots for the validation month, as PNG artifacts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        if model is not None and model.flavor in BOOSTERS:
            imp = sorted(_importance(model).items(), key=lambda kv: kv[1])[-20:]
            fig, ax = plt.subplots(figsize=(7, 6))
            ax.barh([k for k, _ in imp], [v for _, v in imp], color="#3b6ea5")
            ax.set_title(f"{name}: feature importance (gain)")
            fig.tight_layout()
            fig.savefig(Path(tmp) / "feature_importance.png", dpi=110)
            plt.close(fig)
            mlflow.log_dict(dict(imp), "feature_importance.json")
        actual, pred = sample[TARGET].to_numpy(), sample[PREDICTION].to_numpy()
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 5))
        a1.scatter(actual, pred, s=3, alpha=0.3)
        a1.plot([0, 60], [0, 60], color="red", lw=1)
        a1.set(xlabel="actual minutes", ylabel="predicted minutes", title=f"{name}: predicted vs actual")
        a2.hist(pred - actual, bins=np.linspace(-30, 30, 61), color="#3b6ea5")
        a2.set(xlabel="residual (predicted - actual), minutes", ylabel="trips", title="residuals")
        fig.tight_layout()
        fig.savefig(Path(tmp) / "residuals.png", dpi=110)
        plt.close(fig)
        mlflow.log_artifacts(tmp, "plots")


def log_native_model(mlflow, model: NativeModel, input_example):
    """Log the model in its native MLflow flavour with signature and input example; returns the model URI."""
    from jobs.models.prediction import feature_matrix

    return log_model(mlflow, model, input_example[MODEL_FEATURES].astype("float64"), feature_matrix)
