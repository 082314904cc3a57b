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
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from jobs.features import freshness
from jobs.models import registry
from jobs.models.flavors import BOOSTERS, NativeModel
from jobs.models.inputs import MODEL_FEATURES, PREDICTION
from jobs.models.keras_network import keras
from jobs.models.metrics import full_metrics
from jobs.models.prediction import predict_minutes
from jobs.models.profile import PROFILE_COLUMNS, build_profile
from jobs.models.registry import (
    gate_decision,  # noqa: F401  (the gate rule, re-exported for callers of train)
    load_registered,
)
from jobs.platform import lakehouse
from jobs.platform.config import Settings
from jobs.platform.context import RunContext
from jobs.platform.errors import MissingUpstream
from jobs.platform.months import check_month, check_service, month_window
from jobs.platform.spark import free_task_slots
from jobs.platform.tracking import experiment_id, setup_mlflow
from jobs.training import bakeoff, tuning
from jobs.training.artifacts import git_commit, log_native_model, log_plots
from jobs.training.baselines import linear_zone_pair_distance, zone_pair_median
from jobs.training.intervals import train_interval
from jobs.training.learners import assemble, barrier_tasks, fit_model, learner_params
from jobs.training.selection import ENSEMBLE, KEEP, Candidate, ensemble_members, gate, refit


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
    until = latest_feature_month(spark, settings, service) if until == "latest" else check_month(until)
    ctx = RunContext.start("train", spark, settings, service, until)
    require_deep_extra(settings)
    mlflow = setup_mlflow(settings)
    data = open_window(ctx, months or settings.train.months, allow_stale)
    champion_mv = registry.champion(settings, service)
    skip = nothing_new(data.valid_month, champion_mv)
    if skip and not force:
        ctx.log.info("skipped", reason=skip)
        return {"registered_version": None, "promoted": False, "skipped": skip, "valid_month": data.valid_month,
                "champion_version": int(champion_mv.version)}  # fmt: skip
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


@dataclass
class Bakeoff:
    """The candidates of one training run, each evaluated on the validation month and logged as a nested run."""

    ctx: RunContext
    mlflow: Any
    data: TrainingData
    train: Any  # the training rows, cached
    valid: Any  # the validation rows in training range, cached
    train_vec: Any  # the training rows assembled once for the learners that share them
    workers: int
    candidates: list[Candidate] = field(default_factory=list)
    example: Any = None  # five validation rows, the input example every logged model carries

    @classmethod
    def open(cls, ctx: RunContext, mlflow, data: TrainingData) -> Bakeoff:
        train, valid = data.train.cache(), data.valid.cache()
        workers = ctx.settings.train.num_workers or free_task_slots(ctx.spark)
        bake = cls(ctx, mlflow, data, train, valid, assemble(train).cache(), workers)
        ctx.log.info("data", train_months=",".join(data.train_months), valid_month=data.valid_month,
                     train_rows=bake.n_train, valid_rows=bake.n_valid, features_version=data.features_version,
                     workers=workers)  # fmt: skip
        return bake

    @cached_property
    def n_train(self) -> int:
        return self.train.count()

    @cached_property
    def n_valid(self) -> int:
        return self.valid.count()

    def evaluate(self, name: str, learner: str, predictions, seconds: float, **extra) -> Candidate:
        """Score a candidate's validation predictions, log it as a nested run (model, plots) and keep it."""
        mlflow, model = self.mlflow, extra.get("model")
        metrics = full_metrics(predictions)
        with mlflow.start_run(run_name=name, nested=True) as child:
            mlflow.set_tags({"learner": learner, "service": self.ctx.service,
                             "warm_start": extra.get("warm_start", False)})  # fmt: skip
            mlflow.log_params({f"hp_{k}": v for k, v in extra.get("params", {}).items()})
            mlflow.log_metrics({**metrics, "fit_seconds": seconds, "train_tasks": extra.get("train_tasks", 0),
                                **{f"fit_{k}": v for k, v in extra.get("fit_info", {}).items()}})  # fmt: skip
            log_plots(mlflow, model, predictions.select(*KEEP, PREDICTION).limit(5000).toPandas(), name)
            model_uri = log_native_model(mlflow, model, self.input_example()) if model is not None else None
            cand = Candidate(name, learner, metrics, seconds, child.info.run_id, model_uri=model_uri, **extra)
        self.ctx.log.info("candidate", name=name, rmse=round(metrics["rmse"], 3), mae=round(metrics["mae"], 3),
                          fit_s=round(seconds, 1))  # fmt: skip
        self.candidates.append(cand)
        return cand

    def input_example(self):
        if self.example is None:
            self.example = self.valid.select(*MODEL_FEATURES).limit(5).toPandas()
        return self.example

    def close(self) -> None:
        for frame in (self.train_vec, self.train, self.valid):
            frame.unpersist()


def log_run_facts(mlflow, ctx: RunContext, data: TrainingData, bake: Bakeoff, window: int, champion_mv,
                  forced: bool) -> None:  # fmt: skip
    settings = ctx.settings
    mlflow.set_tags({"service": ctx.service, "git_commit": git_commit(), "stage": "train"})
    mlflow.log_params({
        "service": ctx.service, "until": ctx.period, "window_months": window,
        "train_months": ",".join(data.train_months), "valid_month": data.valid_month,
        "features_table": data.features_path, "features_delta_version": data.features_version,
        "train_rows": bake.n_train, "valid_rows": bake.n_valid, "num_workers": bake.workers,
        "target_transform": "log1p", "target_range_min": settings.features.target_min_minutes,
        "target_range_max": settings.features.target_max_minutes, "features": ",".join(MODEL_FEATURES),
        "champion_version_before": champion_mv.version if champion_mv else "none", "forced": forced,
    })  # fmt: skip


def train_candidates(ctx: RunContext, bake: Bakeoff, parent_run_id: str, champion, champion_mv) -> dict:
    """Baselines, each learner (scratch, tuned, warm-started) and the ensemble, into the bake-off; returns the
    tuning results."""
    spark, cfg = ctx.spark, ctx.settings.train
    if cfg.baselines:
        for name, baseline in (("baseline-zone-pair-median", zone_pair_median),
                               ("baseline-linear-pu-do-distance", linear_zone_pair_distance)):  # fmt: skip
            t = time.monotonic()
            bake.evaluate(name, "baseline", baseline(bake.train, bake.valid), time.monotonic() - t)
    tuned = tuning.tune_learners(spark, ctx.settings, bake.train, bake.data.train_months, bake.workers,
                                 bake.mlflow.active_run(), ctx.log)  # fmt: skip
    for name, learner, params, init, rows in candidate_plans(ctx.settings, bake.data, bake.train, champion,
                                                             champion_mv, ctx.log, tuned):  # fmt: skip
        group = f"train-{name}-{parent_run_id[:8]}"
        spark.sparkContext.setJobGroup(group, group)
        t = time.monotonic()
        model, info = fit_model(ctx.settings, learner, rows, params, bake.workers, init,
                                bake.train_vec if rows is bake.train else None)  # fmt: skip
        seconds = time.monotonic() - t
        spark.sparkContext.setJobGroup("", "")
        bake.evaluate(name, learner, predict_minutes(bake.valid, model, KEEP), seconds, model=model,
                      warm_start=init is not None, params=params, train_tasks=barrier_tasks(spark, group),
                      train_data=rows, fit_info=info)  # fmt: skip
    members = ensemble_members(bake.candidates) if cfg.ensemble else []
    if members:  # the mean of the best boosted models on the log scale: the gate keeps it only if it wins
        model = NativeModel.ensemble([m.model for m in members])
        bake.evaluate(ENSEMBLE, "ensemble", predict_minutes(bake.valid, model, KEEP),
                      sum(m.fit_seconds for m in members), model=model,
                      params={"members": ",".join(m.name for m in members)}, members=members)  # fmt: skip
    return tuned


def register_best(ctx: RunContext, bake: Bakeoff, champion, champion_mv):
    """(best candidate, gate decision, interval tags): the best model's reference profile, its refit, the interval
    model, and the gate that registers it and moves the champion alias only if it wins."""
    settings, data, mlflow = ctx.settings, bake.data, bake.mlflow
    models = [c for c in bake.candidates if c.model is not None]
    if not models:
        raise ValueError("train.learners is empty and there is no champion to warm-start: nothing to train")
    best = min(models, key=lambda c: c.rmse)
    # The monitoring reference: the validation month as the chosen model predicted it before any refit.
    profile = build_profile(predict_minutes(data.valid_all, best.model, PROFILE_COLUMNS), data.valid_month,
                            settings.monitor.bins)  # fmt: skip
    profile_uri = registry.log_reference_profile(mlflow, profile)
    cfg = settings.train
    registered = refit(ctx.spark, mlflow, settings, best, bake.valid, bake.workers, champion, ctx.log) if cfg.refit \
        else best  # fmt: skip
    interval_tags = {}
    if cfg.intervals.enabled:  # calibrated on the validation month, which the quantile models never saw
        interval_tags = train_interval(mlflow, bake.train, bake.valid, settings, bake.workers, data.valid_month,
                                       ctx.log).tags  # fmt: skip
    tags = {
        "flavor": best.model.flavor, "candidate": registered.name, "warm_start": best.warm_start,
        "train_months": ",".join(data.train_months), "valid_month": data.valid_month,
        "trained_through": data.valid_month if cfg.refit else data.train_months[-1],
        "features_version": data.features_version, "target_transform": "log1p",
        "features": ",".join(MODEL_FEATURES), "training_run_id": best.run_id, "reference_profile": profile_uri,
        **registry.validation_tags(best.metrics), **interval_tags,
    }  # fmt: skip
    decision = gate(mlflow, settings, ctx.service, registered, tags, (champion, champion_mv), bake.valid,
                    data.valid_month)  # fmt: skip
    return best, decision, interval_tags


def publish_bakeoff(ctx: RunContext, bake: Bakeoff, run_id: str, best: Candidate, decision: dict, interval_tags,
                    tuned: dict):  # fmt: skip
    """The run's candidate table, gate tags and bake-off page (MLflow and the reports folder)."""
    mlflow, candidates = bake.mlflow, bake.candidates
    mlflow.log_dict({c.name: {"rmse": c.rmse, "mae": c.metrics["mae"], "rmsle": c.metrics["rmsle"],
                              "fit_seconds": c.fit_seconds} for c in candidates}, "candidates.json")  # fmt: skip
    mlflow.set_tags({k: str(v) for k, v in decision.items()})
    mlflow.log_metric("best_rmse", best.rmse)
    speed_sample = bake.valid.select(*MODEL_FEATURES).limit(20000).toPandas()
    interval = {k.removeprefix("interval_"): float(v) for k, v in interval_tags.items()
                if k in ("interval_coverage", "interval_raw_coverage")}  # fmt: skip
    return bakeoff.publish(mlflow, ctx.settings, {
        "service": ctx.service, "run_id": run_id, "valid_month": bake.data.valid_month,
        "train_months": bake.data.train_months, "tuning_month": tuning.tuning_month(bake.data.train_months, tuned),
        "registered_version": decision["registered_version"], "gate_reason": decision["gate_reason"],
        "rows": [bakeoff.row(c, best.name, speed_sample, interval) for c in candidates],
        "tuning": [vars(t) for t in tuned.values()],
    })  # fmt: skip


def summarize(run_id: str, data: TrainingData, decision: dict, candidates: list[Candidate], interval_tags,
              tuned: dict, report_path) -> dict[str, Any]:  # fmt: skip
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
        "tuning": {t.learner: {"tuning_month": t.tuning_month, "tuning_rmse": round(t.tuning_rmse, 4),
                               "trials": len(t.trials), "params": t.params} for t in tuned.values()},  # fmt: skip
        "bakeoff": str(report_path),
    }


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
