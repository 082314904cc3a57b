"""The prediction interval that travels with a model version: two LightGBM quantile boosters and the conformal
offset that calibrates them (how they are fitted and calibrated: :mod:`jobs.training.intervals`).

Bounds are built on the log scale and turned into minutes at the end: they never go below zero, never cross, and
always hold the point prediction (which comes from the champion, a different model).
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.models.flavors import NativeModel

P10, P90 = "predicted_p10_min", "predicted_p90_min"  # named for the default 80% interval


Q_LO, Q_HI = "q_lo_log", "q_hi_log"


ARTIFACT_DIR = "interval"


@dataclass
class IntervalModel:
    """The two quantile boosters and the calibration that widens (or narrows) them, on the log1p scale."""

    lower: NativeModel
    upper: NativeModel
    offset: float
    coverage: float
    calibration: dict[str, Any]  # month, rows, level, raw and calibrated coverage there
    tags: dict[str, Any] = field(default_factory=dict)  # set once logged: what the registered version carries
    columns = (P10, P90)  # what prediction.predict_minutes adds for an interval

    def bounds(self, point_minutes, q_lo, q_hi):
        """Interval bounds in minutes from the quantile models' raw log-scale outputs (numpy arrays)."""
        return interval_bounds(point_minutes, q_lo, q_hi, self.offset)


def quantile_alphas(coverage: float) -> tuple[float, float]:
    return (1 - coverage) / 2, (1 + coverage) / 2


def finite_sample_level(n: int, coverage: float) -> float:
    """The quantile level of the conformity scores that gives coverage >= ``coverage`` on an exchangeable month:
    ceil(coverage (n + 1)) / n, at most 1."""
    if n <= 0:
        raise ValueError("conformal calibration needs at least one calibration row")
    return min(1.0, math.ceil(coverage * (n + 1)) / n)


def interval_bounds(point_minutes, q_lo, q_hi, offset: float):
    """(lower, upper) in minutes: the calibrated log-scale bounds, uncrossed, at least zero, holding the point."""
    import numpy as np

    lo, hi = np.asarray(q_lo, dtype="float64") - offset, np.asarray(q_hi, dtype="float64") + offset
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)  # a negative offset larger than half the width would cross them
    lower = np.clip(np.expm1(lo), 0.0, None)
    upper = np.clip(np.expm1(hi), 0.0, None)
    point = np.asarray(point_minutes, dtype="float64")
    return np.minimum(lower, point), np.maximum(upper, point)


# ---- MLflow ------------------------------------------------------------------------------------------------------
def log_interval(mlflow, interval: IntervalModel) -> str:
    """The two boosters (LightGBM model text) and the calibration, as artifacts of the active run; returns the
    artifact URI the registered version's ``interval_uri`` tag points at."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "lower.txt").write_text(interval.lower.payload)
        Path(tmp, "upper.txt").write_text(interval.upper.payload)
        facts = {"offset": interval.offset, "coverage": interval.coverage, **interval.calibration}
        Path(tmp, "calibration.json").write_text(json.dumps(facts, indent=1))
        mlflow.log_artifacts(tmp, ARTIFACT_DIR)
    return f"{mlflow.get_artifact_uri()}/{ARTIFACT_DIR}"


def load_interval(uri: str) -> IntervalModel:
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(uri))
    facts = json.loads((local / "calibration.json").read_text())
    return IntervalModel(
        NativeModel("lightgbm", (local / "lower.txt").read_text()),
        NativeModel("lightgbm", (local / "upper.txt").read_text()),
        float(facts.pop("offset")),
        float(facts.pop("coverage")),
        facts,
    )
