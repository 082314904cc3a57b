"""Train: distributed XGBoost (xgboost.spark) and LightGBM (SynapseML) on a window of feature months, tracked in
MLflow, with a registry gate that promotes a candidate to ``champion`` only when it beats the current one.

Window: the ``--months`` feature months up to and including ``--until``; the last month present is the
validation month (a time-based split), the earlier ones are the training months. Rows are filtered to the
training range (``in_training_range``) here and only here. The target is learned as ``log1p(minutes)``.

Candidates: each learner from scratch (the deep network, :mod:`jobs.training.deep`, on the driver from a bounded
sample), with tuned hyperparameters when a search is asked for (``--tune``: see :mod:`jobs.training.tuning`; it never
sees the validation month) and, when a booster champion exists, warm-started from it ("fine-tuning the pre-trained
model": more boosting rounds on the training months it has not seen); then the ensemble, the mean of the best
XGBoost and LightGBM candidates on the log scale. Two baselines are logged on the same split for reference: the
zone-pair median and a linear regression on zone pair + distance.
Every candidate lands in the run's bake-off report (:mod:`jobs.training.bakeoff`).

Honest numbers: a window whose validation month the champion has already seen (``trained_through`` tag) registers
nothing unless forced, so the gate always compares both models on a month neither trained on. The best candidate
is registered with its facts as tags and the reference profile the monitor reads (its validation month, predicted
before the refit); it takes the ``champion`` alias only if it beats the champion re-scored on that month.
"""

from __future__ import annotations

from typing import Any

from jobs.features import freshness
from jobs.models import registry
from jobs.models.inputs import MODEL_FEATURES
from jobs.models.keras_network import keras
from jobs.models.registry import (
    gate_decision,  # noqa: F401  (the gate rule, re-exported for callers of train)
    load_registered,
)
from jobs.platform import lakehouse
from jobs.platform.config import Settings
from jobs.platform.context import RunContext
from jobs.platform.errors import MissingUpstream, WindowNotFilled
from jobs.platform.months import check_month, check_service, month_window
from jobs.platform.tracking import experiment_id, setup_mlflow
from jobs.training import bakeoff, tuning
from jobs.training.artifacts import git_commit
from jobs.training.candidates import Bakeoff, TrainingData, train_candidates
from jobs.training.registration import register_best
from jobs.training.selection import Candidate


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------
def load_training_data(spark, settings: Settings, service: str, until: str, months: int) -> TrainingData:
    from pyspark.sql import functions as F

    window = month_window(until, months)
    version = lakehouse.current_version(spark, settings, lakehouse.FEATURES)
    feats = (
        lakehouse.read(spark, settings, lakehouse.FEATURES, version)
        .where(F.col("service") == service)
        .where(F.col("month").isin(window))
    )
    present = sorted(r.month for r in feats.select("month").distinct().collect())
    if len(present) < 2:
        raise WindowNotFilled(
            f"training {service} until {until} needs feature months for a train/validation split; found "
            f"{present or 'none'} in {window[0]}..{until}: run `taxi features` for earlier months first"
        )
    usable = feats.where("in_training_range")
    return TrainingData(
        train=usable.where(F.col("month").isin(present[:-1])),
        valid=usable.where(F.col("month") == present[-1]),
        valid_all=feats.where(F.col("month") == present[-1]),
        train_months=present[:-1],
        valid_month=present[-1],
        features_version=version,
        features_path=lakehouse.FEATURES.path(settings),
    )


def latest_feature_month(spark, settings: Settings, service: str) -> str:
    """The newest month with features for ``service`` (what scheduled retraining trains up to)."""
    row = (
        lakehouse.read(spark, settings, lakehouse.FEATURES)
        .where(lakehouse.partition_predicate(service))
        .agg({"month": "max"})
        .first()
    )
    if row is None or row[0] is None:
        raise MissingUpstream(f"silver/features has no {service} months yet: run `taxi features` first")
    return row[0]


# ---------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------
def nothing_new(valid_month: str, champion_mv) -> str | None:
    """Why this window cannot give an honest gate (its validation month is not after the champion's training
    window), or None when it can."""
    seen = registry.trained_through(champion_mv)
    if seen is None or valid_month > seen:
        return None
    return (
        f"nothing registered: champion v{champion_mv.version} has seen months through {seen}, so validation month "
        f"{valid_month} cannot compare the two fairly; train when a newer month has features (--force overrides)"
    )


def run(
    spark,
    settings: Settings,
    service: str,
    until: str,
    months: int | None = None,
    force: bool = False,
    allow_stale: bool = False,
) -> dict[str, Any]:
    check_service(service)
    until = latest_feature_month(spark, settings, service) if until == "latest" else check_month(until)
    ctx = RunContext.start("train", spark, settings, service, until)
    require_deep_extra(settings)
    mlflow = setup_mlflow(settings)
    data = open_window(ctx, months or settings.train.months, allow_stale)
    champion_mv = registry.champion(settings, service)
    skip = nothing_new(data.valid_month, champion_mv)
    if skip and not force:
        ctx.log.info("skipped", reason=skip)
        return {
            "registered_version": None,
            "promoted": False,
            "skipped": skip,
            "valid_month": data.valid_month,
            "champion_version": int(champion_mv.version),
        }
    tuning.check_window(settings, data.train_months)
    champion = load_registered(settings, service, version=int(champion_mv.version))[0] if champion_mv else None
    bake = Bakeoff.open(ctx, mlflow, data)
    exp = experiment_id(settings, f"train-{service}")
    mlflow.set_experiment(experiment_id=exp)  # nested candidate runs go to the same experiment as their parent
    with mlflow.start_run(experiment_id=exp, run_name=f"{service}-until-{until}") as parent:
        log_run_facts(mlflow, ctx, data, bake, months or settings.train.months, champion_mv, force)
        tuned = train_candidates(ctx, bake, parent.info.run_id, champion, champion_mv)
        best, decision, interval_tags = register_best(ctx, bake, champion, champion_mv)
        report_path = publish_bakeoff(ctx, bake, parent.info.run_id, best, decision, interval_tags, tuned)
    bake.close()
    ctx.log.info("done", **{k: v for k, v in decision.items()}, duration_s=round(ctx.log.elapsed(), 1))
    return summarize(parent.info.run_id, data, decision, bake.candidates, interval_tags, tuned, report_path)


def require_deep_extra(settings: Settings) -> None:
    """A missing [deep] extra fails here, not after an hour of boosting."""
    if "deep" in settings.train.learners:
        keras()


def open_window(ctx: RunContext, months: int, allow_stale: bool) -> TrainingData:
    """The window's training and validation months, refused when stale features would train it."""
    data = load_training_data(ctx.spark, ctx.settings, ctx.service, ctx.period, months)
    if not allow_stale:
        freshness.require_fresh(ctx.settings, ctx.service, [*data.train_months, data.valid_month])
    return data


def log_run_facts(
    mlflow, ctx: RunContext, data: TrainingData, bake: Bakeoff, window: int, champion_mv, forced: bool
) -> None:
    settings = ctx.settings
    mlflow.set_tags({"service": ctx.service, "git_commit": git_commit(), "stage": "train"})
    mlflow.log_params(
        {
            "service": ctx.service,
            "until": ctx.period,
            "window_months": window,
            "train_months": ",".join(data.train_months),
            "valid_month": data.valid_month,
            "features_table": data.features_path,
            "features_delta_version": data.features_version,
            "train_rows": bake.n_train,
            "valid_rows": bake.n_valid,
            "num_workers": bake.workers,
            "target_transform": "log1p",
            "target_range_min": settings.features.target_min_minutes,
            "target_range_max": settings.features.target_max_minutes,
            "features": ",".join(MODEL_FEATURES),
            "champion_version_before": champion_mv.version if champion_mv else "none",
            "forced": forced,
        }
    )


def publish_bakeoff(
    ctx: RunContext, bake: Bakeoff, run_id: str, best: Candidate, decision: dict, interval_tags, tuned: dict
):
    """The run's candidate table, gate tags and bake-off page (MLflow and the reports folder)."""
    mlflow, candidates = bake.mlflow, bake.candidates
    mlflow.log_dict(
        {
            c.name: {"rmse": c.rmse, "mae": c.metrics["mae"], "rmsle": c.metrics["rmsle"], "fit_seconds": c.fit_seconds}
            for c in candidates
        },
        "candidates.json",
    )
    mlflow.set_tags({k: str(v) for k, v in decision.items()})
    mlflow.log_metric("best_rmse", best.rmse)
    speed_sample = bake.valid.select(*MODEL_FEATURES).limit(20000).toPandas()
    interval = {
        k.removeprefix("interval_"): float(v)
        for k, v in interval_tags.items()
        if k in ("interval_coverage", "interval_raw_coverage")
    }
    return bakeoff.publish(
        mlflow,
        ctx.settings,
        {
            "service": ctx.service,
            "run_id": run_id,
            "valid_month": bake.data.valid_month,
            "train_months": bake.data.train_months,
            "tuning_month": tuning.tuning_month(bake.data.train_months, tuned),
            "registered_version": decision["registered_version"],
            "gate_reason": decision["gate_reason"],
            "rows": [bakeoff.row(c, best.name, speed_sample, interval) for c in candidates],
            "tuning": [vars(t) for t in tuned.values()],
        },
    )


def summarize(
    run_id: str,
    data: TrainingData,
    decision: dict,
    candidates: list[Candidate],
    interval_tags,
    tuned: dict,
    report_path,
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "valid_month": data.valid_month,
        "train_months": data.train_months,
        "features_version": data.features_version,
        **decision,
        "candidates": {c.name: round(c.rmse, 4) for c in candidates},
        "fit_seconds": {c.name: round(c.fit_seconds, 1) for c in candidates if c.model is not None},
        "candidate_models": {c.name: c.model_uri for c in candidates if c.model_uri},
        "interval": {k.removeprefix("interval_"): v for k, v in interval_tags.items()},
        "tuning": {
            t.learner: {
                "tuning_month": t.tuning_month,
                "tuning_rmse": round(t.tuning_rmse, 4),
                "trials": len(t.trials),
                "params": t.params,
            }
            for t in tuned.values()
        },
        "bakeoff": str(report_path),
    }
