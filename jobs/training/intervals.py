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

from typing import Any

from jobs.models.flavors import NativeModel
from jobs.models.inputs import MODEL_FEATURES, TARGET
from jobs.models.interval import Q_HI, Q_LO, IntervalModel, finite_sample_level, log_interval, quantile_alphas


def fit_quantile_models(train, params: dict[str, Any], coverage: float, workers: int, seed: int):
    """(lower, upper) NativeModels: distributed LightGBM quantile fits (SynapseML) on the training rows."""
    from jobs.training.learners import assemble, fit_lightgbm

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
    from jobs.models.inputs import PREDICTION
    from jobs.models.prediction import predict_minutes

    lo = predict_minutes(df, lower, [TARGET, *MODEL_FEATURES], log_scale=True).withColumnRenamed(PREDICTION, Q_LO)
    return predict_minutes(lo, upper, [TARGET, Q_LO], log_scale=True).withColumnRenamed(PREDICTION, Q_HI)


def calibrate(scored, coverage: float) -> tuple[float, dict[str, Any]]:
    """(offset, facts) from the calibration month's rows with ``q_lo_log``, ``q_hi_log`` and the target.

    The offset is the finite-sample quantile of the conformity scores (Spark's percentile_approx with an accuracy
    finer than one rank for up to ten million rows)."""
    from pyspark.sql import functions as F

    y = F.log1p(F.col(TARGET))
    scores = scored.select(
        F.greatest(F.col(Q_LO) - y, y - F.col(Q_HI)).alias("score"),
        ((y >= F.col(Q_LO)) & (y <= F.col(Q_HI))).cast("double").alias("inside"),
    )
    n, raw = scores.agg(F.count("*"), F.avg("inside")).first()
    level = finite_sample_level(int(n), coverage)
    offset = scores.agg(F.percentile_approx("score", level, 10_000_000)).first()[0]
    inside = scores.agg(F.avg((F.col("score") <= F.lit(offset)).cast("double"))).first()[0]
    return float(offset), {"rows": int(n), "level": level, "raw_coverage": float(raw), "coverage": float(inside)}


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
        mlflow.log_params(
            {
                "coverage": coverage,
                "alphas": ",".join(map(str, quantile_alphas(coverage))),
                "calibration_month": valid_month,
                **{f"hp_{k}": v for k, v in params.items()},
            }
        )
        mlflow.log_metrics(
            {
                "calibration_rows": facts["rows"],
                "conformal_offset": offset,
                "fit_seconds": seconds,
                "raw_coverage_calibration": facts["raw_coverage"],
                "coverage_calibration": facts["coverage"],
            }
        )
        interval.tags = {
            "interval_uri": log_interval(mlflow, interval),
            "interval_coverage": coverage,
            "interval_offset": round(offset, 6),
            "interval_calibration_month": valid_month,
            "interval_raw_coverage": round(facts["raw_coverage"], 4),
        }
    log.info(
        "interval",
        coverage=coverage,
        calibration_month=valid_month,
        offset=round(offset, 4),
        raw_coverage=round(facts["raw_coverage"], 4),
        calibrated_coverage=round(facts["coverage"], 4),
        fit_s=round(seconds, 1),
    )
    return interval
