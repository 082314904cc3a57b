"""Train: distributed XGBoost (xgboost.spark) and LightGBM (SynapseML) on a window of feature months, tracked in
MLflow, with a registry gate that promotes a candidate to ``champion`` only when it beats the current one.

Window: the ``--months`` feature months up to and including ``--until``; the last month present is the
validation month (a time-based split), the earlier ones are the training months. Rows are filtered to the
training range (``in_training_range``) here and only here. The target is learned as ``log1p(minutes)``.

Candidates: each learner from scratch (the deep network, ``training/deep.py``, on the driver from a bounded
sample), with tuned hyperparameters when a search is asked for (``--tune``: see ``training/tuning.py``; it never
sees the validation month) and, when a booster champion exists, warm-started from it ("fine-tuning the pre-trained
model": more boosting rounds on the training months it has not seen); then the ensemble, the mean of the best
XGBoost and LightGBM candidates on the log scale. Two baselines are logged on the same split for reference: the
zone-pair median and a linear regression on zone pair + distance.
Every candidate lands in the run's bake-off report (``training/bakeoff.py``).

Honest numbers: a window whose validation month the champion has already seen (``trained_through`` tag) registers
nothing unless forced, so the gate always compares both models on a month neither trained on. The best candidate
is registered with its facts as tags and the reference profile the monitor reads (its validation month, predicted
before the refit); it takes the ``champion`` alias only if it beats the champion re-scored on that month.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from . import freshness, lakehouse, registry
from .config import Settings
from .errors import MissingUpstream
from .features import MODEL_FEATURES
from .flavors import BOOSTERS
from .log import JobLog
from .modeling import (
    PREDICTION,
    NativeModel,
    experiment_id,
    full_metrics,
    load_registered,
    predict_minutes,
    setup_mlflow,
)
from .monitoring.profile import PROFILE_COLUMNS, build_profile
from .months import check_month, check_service, month_window
from .registry import gate_decision  # noqa: F401  (the gate rule, re-exported for callers of train)
from .spark import free_task_slots
from .training import bakeoff, tuning
from .training.artifacts import git_commit, log_native_model, log_plots
from .training.baselines import linear_zone_pair_distance, zone_pair_median
from .training.intervals import train_interval
from .training.learners import assemble, barrier_tasks, fit_model, learner_params
from .training.selection import ENSEMBLE, KEEP, Candidate, ensemble_members, gate, refit


@dataclass
class TrainingData:
    train: Any
    valid: Any
    valid_all: Any  # every validation-month row, in training range or not (the monitoring reference)
    train_months: list[str]
    valid_month: str
    features_version: int
    features_path: str


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
        raise MissingUpstream(
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


def run(spark, settings: Settings, service: str, until: str, months: int | None = None,
        force: bool = False, allow_stale: bool = False) -> dict[str, Any]:  # fmt: skip
    check_service(service)
    if until == "latest":
        until = latest_feature_month(spark, settings, service)
    check_month(until)
    cfg = settings.train
    if "deep" in cfg.learners:  # a missing [deep] extra fails here, not after an hour of boosting
        from .training.deep import keras

        keras()
    log = JobLog("train", service, until)
    mlflow = setup_mlflow(settings)
    data = load_training_data(spark, settings, service, until, months or cfg.months)
    if not allow_stale:
        freshness.require_fresh(settings, service, [*data.train_months, data.valid_month])
    champion_mv = registry.champion(settings, service)
    skip = nothing_new(data.valid_month, champion_mv)
    if skip and not force:
        log.info("skipped", reason=skip)
        return {"registered_version": None, "promoted": False, "skipped": skip, "valid_month": data.valid_month,
                "champion_version": int(champion_mv.version)}  # fmt: skip
    tuning.check_window(settings, data.train_months)
    champion = load_registered(settings, service, version=int(champion_mv.version))[0] if champion_mv else None
    train, valid = data.train.cache(), data.valid.cache()
    n_train, n_valid = train.count(), valid.count()
    workers = cfg.num_workers or free_task_slots(spark)
    log.info(
        "data",
        train_months=",".join(data.train_months),
        valid_month=data.valid_month,
        train_rows=n_train,
        valid_rows=n_valid,
        features_version=data.features_version,
        workers=workers,
    )
    exp = experiment_id(settings, f"train-{service}")
    mlflow.set_experiment(experiment_id=exp)  # nested candidate runs go to the same experiment as their parent
    candidates: list[Candidate] = []
    train_vec = assemble(train).cache()
    sample = None
    with mlflow.start_run(experiment_id=exp, run_name=f"{service}-until-{until}") as parent:
        mlflow.set_tags({"service": service, "git_commit": git_commit(), "stage": "train"})
        mlflow.log_params(
            {
                "service": service,
                "until": until,
                "window_months": months or cfg.months,
                "train_months": ",".join(data.train_months),
                "valid_month": data.valid_month,
                "features_table": data.features_path,
                "features_delta_version": data.features_version,
                "train_rows": n_train,
                "valid_rows": n_valid,
                "num_workers": workers,
                "target_transform": "log1p",
                "target_range_min": settings.features.target_min_minutes,
                "target_range_max": settings.features.target_max_minutes,
                "features": ",".join(MODEL_FEATURES),
                "champion_version_before": champion_mv.version if champion_mv else "none",
                "forced": force,
            }
        )

        def evaluate(name: str, learner: str, predictions, seconds: float, **extra) -> Candidate:
            nonlocal sample
            metrics = full_metrics(predictions)
            with mlflow.start_run(run_name=name, nested=True) as child:
                mlflow.set_tags({"learner": learner, "service": service, "warm_start": extra.get("warm_start", False)})
                mlflow.log_params({f"hp_{k}": v for k, v in extra.get("params", {}).items()})
                mlflow.log_metrics(
                    {
                        **metrics,
                        "fit_seconds": seconds,
                        "train_tasks": extra.get("train_tasks", 0),
                        **{f"fit_{k}": v for k, v in extra.get("fit_info", {}).items()},
                    }
                )
                pdf = predictions.select(*KEEP, PREDICTION).limit(5000).toPandas()
                log_plots(mlflow, extra.get("model"), pdf, name)
                model_uri = None
                if extra.get("model") is not None:
                    if sample is None:
                        sample = valid.select(*MODEL_FEATURES).limit(5).toPandas()
                    model_uri = log_native_model(mlflow, extra["model"], sample)
                cand = Candidate(name, learner, metrics, seconds, child.info.run_id, model_uri=model_uri, **extra)
            log.info("candidate", name=name, rmse=round(metrics["rmse"], 3), mae=round(metrics["mae"], 3),
                     fit_s=round(seconds, 1))  # fmt: skip
            candidates.append(cand)
            return cand

        if cfg.baselines:
            t = time.monotonic()
            evaluate("baseline-zone-pair-median", "baseline", zone_pair_median(train, valid), time.monotonic() - t)
            t = time.monotonic()
            evaluate("baseline-linear-pu-do-distance", "baseline", linear_zone_pair_distance(train, valid),
                     time.monotonic() - t)  # fmt: skip

        tuned = tuning.tune_learners(spark, settings, train, data.train_months, workers, parent, log)
        for name, learner, params, init, rows in candidate_plans(settings, data, train, champion, champion_mv, log,
                                                                 tuned):  # fmt: skip
            group = f"train-{name}-{parent.info.run_id[:8]}"
            spark.sparkContext.setJobGroup(group, group)
            t = time.monotonic()
            shared = train_vec if rows is train else None
            model, info = fit_model(settings, learner, rows, params, workers, init, shared)
            seconds = time.monotonic() - t
            spark.sparkContext.setJobGroup("", "")
            evaluate(name, learner, predict_minutes(valid, model, KEEP), seconds, model=model,
                     warm_start=init is not None, params=params, train_tasks=barrier_tasks(spark, group),
                     train_data=rows, fit_info=info)  # fmt: skip

        members = ensemble_members(candidates) if cfg.ensemble else []
        if members:  # the mean of the best boosted models on the log scale: the gate keeps it only if it wins
            model = NativeModel.ensemble([m.model for m in members])
            evaluate(ENSEMBLE, "ensemble", predict_minutes(valid, model, KEEP), sum(m.fit_seconds for m in members),
                     model=model, params={"members": ",".join(m.name for m in members)}, members=members)  # fmt: skip

        models = [c for c in candidates if c.model is not None]
        if not models:
            raise ValueError("train.learners is empty and there is no champion to warm-start: nothing to train")
        best = min(models, key=lambda c: c.rmse)
        # The monitoring reference: the validation month as the chosen model predicted it before any refit.
        profile = build_profile(predict_minutes(data.valid_all, best.model, PROFILE_COLUMNS), data.valid_month,
                                settings.monitor.bins)  # fmt: skip
        profile_uri = registry.log_reference_profile(mlflow, profile)
        registered = refit(spark, mlflow, settings, best, valid, workers, champion, log) if cfg.refit else best
        interval_tags = {}
        if cfg.intervals.enabled:  # calibrated on the validation month, which the quantile models never saw
            interval_tags = train_interval(mlflow, train, valid, settings, workers, data.valid_month, log).tags
        tags = {
            "flavor": best.model.flavor,
            "candidate": registered.name,
            "warm_start": best.warm_start,
            "train_months": ",".join(data.train_months),
            "valid_month": data.valid_month,
            "trained_through": data.valid_month if cfg.refit else data.train_months[-1],
            "features_version": data.features_version,
            "target_transform": "log1p",
            "features": ",".join(MODEL_FEATURES),
            "training_run_id": best.run_id,
            "reference_profile": profile_uri,
            **registry.validation_tags(best.metrics),
            **interval_tags,
        }
        decision = gate(mlflow, settings, service, registered, tags, champion, champion_mv, valid, data.valid_month)
        mlflow.log_dict({c.name: {"rmse": c.rmse, "mae": c.metrics["mae"], "rmsle": c.metrics["rmsle"],
                                  "fit_seconds": c.fit_seconds} for c in candidates}, "candidates.json")  # fmt: skip
        mlflow.set_tags({k: str(v) for k, v in decision.items()})
        mlflow.log_metric("best_rmse", best.rmse)
        speed_sample = valid.select(*MODEL_FEATURES).limit(20000).toPandas()
        interval = {k.removeprefix("interval_"): float(v) for k, v in interval_tags.items()
                    if k in ("interval_coverage", "interval_raw_coverage")}  # fmt: skip
        report_path = bakeoff.publish(mlflow, settings, {
            "service": service, "run_id": parent.info.run_id, "valid_month": data.valid_month,
            "train_months": data.train_months, "tuning_month": tuning.tuning_month(data.train_months, tuned),
            "registered_version": decision["registered_version"], "gate_reason": decision["gate_reason"],
            "rows": [bakeoff.row(c, best.name, speed_sample, interval) for c in candidates],
            "tuning": [vars(t) for t in tuned.values()],
        })  # fmt: skip
    train_vec.unpersist()
    train.unpersist()
    valid.unpersist()
    summary = {
        "run_id": parent.info.run_id,
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
        },  # fmt: skip
        "bakeoff": str(report_path),
    }
    log.info("done", **{k: v for k, v in decision.items()}, duration_s=round(log.elapsed(), 1))
    return summary


def candidate_plans(settings: Settings, data: TrainingData, train, champion, champion_mv, log, tuned=None):
    """(name, learner, params, init model, rows) per candidate: each learner from scratch on the window, with its
    tuned parameters when a search ran, and the champion continued on the training months it has not seen (none
    left: no warm start)."""
    from pyspark.sql import functions as F

    cfg = settings.train
    plans = [(f"{learner}-scratch", learner, learner_params(settings, learner), None, train)
             for learner in cfg.learners]  # fmt: skip
    plans += [(f"{learner}-tuned", learner, t.params, None, train) for learner, t in (tuned or {}).items()]
    if champion is None or not cfg.warm_start:
        return plans
    if champion.flavor not in BOOSTERS:
        log.info("warm_start_skipped", reason=f"the champion is a {champion.flavor} model: only a booster continues")
        return plans
    seen = registry.trained_through(champion_mv) or ""
    unseen = [m for m in data.train_months if m > seen]
    if not unseen:
        log.info("warm_start_skipped", reason=f"champion v{champion_mv.version} has seen every training month")
        return plans
    params = dict(learner_params(settings, champion.flavor))
    params[tuning.ROUNDS[champion.flavor]] = cfg.warm_start_rounds
    return [*plans, (f"{champion.flavor}-warm-start", champion.flavor, params, champion,
                     train.where(F.col("month").isin(unseen)))]  # fmt: skip
