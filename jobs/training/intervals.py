"""Prediction intervals by conformalized quantile regression (CQR, Romano et al. 2019).

Two LightGBM quantile models (``objective=quantile``, alpha (1-c)/2 and (1+c)/2 for coverage c) learn the lower and
upper bound of ``log1p(minutes)`` on the training months. The validation month, which neither they nor any early
stopping saw, calibrates them: the conformity score of a trip is ``max(q_lo - y, y - q_hi)`` (how far outside the
raw interval its duration fell; negative inside), and the offset is its finite-sample quantile at level
``ceil(c (n + 1)) / n``. Both bounds move out by the offset (in when it is negative), so on a month exchangeable
with the calibration month the interval holds a share c of the trips, whatever the quantile models got wrong.

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

from ..features import MODEL_FEATURES, TARGET
from ..modeling import NativeModel

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
    columns = (P10, P90)  # what modeling.predict_minutes adds for an interval

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


def fit_quantile_models(train, params: dict[str, Any], coverage: float, workers: int, seed: int):
    """(lower, upper) NativeModels: distributed LightGBM quantile fits (SynapseML) on the training rows."""
    from .learners import assemble, fit_lightgbm

    vec = assemble(train).cache()
    try:
        lower, upper = (
            NativeModel.from_booster(fit_lightgbm(vec, {**params, "objective": "quantile", "alpha": a}, workers, seed))
            for a in quantile_alphas(coverage)
        )
        return lower, upper
    finally:
        vec.unpersist()


def with_log_quantiles(df, lower: NativeModel, upper: NativeModel):
    """The target and the two quantile models' raw log-scale predictions, ``q_lo_log`` and ``q_hi_log``."""
    from ..modeling import PREDICTION, predict_minutes

    lo = predict_minutes(df, lower, [TARGET, *MODEL_FEATURES], log_scale=True).withColumnRenamed(PREDICTION, Q_LO)
    return predict_minutes(lo, upper, [TARGET, Q_LO], log_scale=True).withColumnRenamed(PREDICTION, Q_HI)


def calibrate(scored, coverage: float) -> tuple[float, dict[str, Any]]:
    """(offset, facts) from the calibration month's rows with ``q_lo_log``, ``q_hi_log`` and the target.

    The offset is the finite-sample quantile of the conformity scores (Spark's percentile_approx with an accuracy
    finer than one rank for up to ten million rows)."""
    from pyspark.sql import functions as F

    y = F.log1p(F.col(TARGET))
    scores = scored.select(F.greatest(F.col(Q_LO) - y, y - F.col(Q_HI)).alias("score"),
                           ((y >= F.col(Q_LO)) & (y <= F.col(Q_HI))).cast("double").alias("inside"))  # fmt: skip
    n, raw = scores.agg(F.count("*"), F.avg("inside")).first()
    level = finite_sample_level(int(n), coverage)
    offset = scores.agg(F.percentile_approx("score", level, 10_000_000)).first()[0]
    inside = scores.agg(F.avg((F.col("score") <= F.lit(offset)).cast("double"))).first()[0]
    return float(offset), {"rows": int(n), "level": level, "raw_coverage": float(raw), "coverage": float(inside)}


def coverage_metrics(df, lower: str = P10, upper: str = P90, actual: str = TARGET, by: str | None = None):
    """Share of rows whose actual duration lies inside [lower, upper] and the mean width, overall or per group."""
    from pyspark.sql import functions as F

    from ..modeling import aggregate

    inside = ((F.col(actual) >= F.col(lower)) & (F.col(actual) <= F.col(upper))).cast("double")
    aggs = [F.avg(inside).alias("coverage"), F.avg(F.col(upper) - F.col(lower)).alias("interval_width")]
    return aggregate(df.where(F.col(lower).isNotNull() & F.col(actual).isNotNull()), aggs, by)


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


def train_interval(mlflow, train, valid, settings, workers: int, valid_month: str, log) -> IntervalModel:
    """Fit the quantile models on the training rows, calibrate them on the validation month, log both in a nested
    run ``interval-cqr``; the interval's ``tags`` (its artifact URI and calibration) go on the registered version."""
    import time

    cfg = settings.train
    coverage = cfg.intervals.coverage
    params = {**cfg.lightgbm, **cfg.intervals.params}
    t = time.monotonic()
    lower, upper = fit_quantile_models(train, params, coverage, workers, cfg.seed)
    seconds = time.monotonic() - t
    offset, facts = calibrate(with_log_quantiles(valid, lower, upper), coverage)
    interval = IntervalModel(lower, upper, offset, coverage, {"month": valid_month, **facts})
    with mlflow.start_run(run_name="interval-cqr", nested=True):
        mlflow.set_tags({"learner": "lightgbm-quantile", "conformal": "cqr"})
        mlflow.log_params({"coverage": coverage, "alphas": ",".join(map(str, quantile_alphas(coverage))),
                           "calibration_month": valid_month, **{f"hp_{k}": v for k, v in params.items()}})  # fmt: skip
        mlflow.log_metrics({"calibration_rows": facts["rows"], "conformal_offset": offset, "fit_seconds": seconds,
                            "raw_coverage_calibration": facts["raw_coverage"],
                            "coverage_calibration": facts["coverage"]})  # fmt: skip
        interval.tags = {"interval_uri": log_interval(mlflow, interval), "interval_coverage": coverage,
                         "interval_offset": round(offset, 6), "interval_calibration_month": valid_month,
                         "interval_raw_coverage": round(facts["raw_coverage"], 4)}  # fmt: skip
    log.info("interval", coverage=coverage, calibration_month=valid_month, offset=round(offset, 4),
             raw_coverage=round(facts["raw_coverage"], 4), calibrated_coverage=round(facts["coverage"], 4),
             fit_s=round(seconds, 1))  # fmt: skip
    return interval
