"""The candidates of one training run: what is trained (baselines, each learner from scratch, tuned and
warm-started, the ensemble) and the bake-off that evaluates each on the validation month and logs it to MLflow."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from jobs.models import registry
from jobs.models.flavors import BOOSTERS, NativeModel
from jobs.models.inputs import MODEL_FEATURES, PREDICTION
from jobs.models.metrics import full_metrics
from jobs.models.prediction import predict_minutes
from jobs.platform.config import Settings
from jobs.platform.context import RunContext
from jobs.platform.spark import free_task_slots
from jobs.training import tuning
from jobs.training.artifacts import log_native_model, log_plots
from jobs.training.baselines import linear_zone_pair_distance, zone_pair_median
from jobs.training.learners import assemble, barrier_tasks, fit_model, learner_params
from jobs.training.selection import ENSEMBLE, KEEP, Candidate, ensemble_members


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
        ctx.log.info(
            "data",
            train_months=",".join(data.train_months),
            valid_month=data.valid_month,
            train_rows=bake.n_train,
            valid_rows=bake.n_valid,
            features_version=data.features_version,
            workers=workers,
        )
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
            mlflow.set_tags(
                {"learner": learner, "service": self.ctx.service, "warm_start": extra.get("warm_start", False)}
            )
            mlflow.log_params({f"hp_{k}": v for k, v in extra.get("params", {}).items()})
            mlflow.log_metrics(
                {
                    **metrics,
                    "fit_seconds": seconds,
                    "train_tasks": extra.get("train_tasks", 0),
                    **{f"fit_{k}": v for k, v in extra.get("fit_info", {}).items()},
                }
            )
            log_plots(mlflow, model, predictions.select(*KEEP, PREDICTION).limit(5000).toPandas(), name)
            model_uri = log_native_model(mlflow, model, self.input_example()) if model is not None else None
            cand = Candidate(name, learner, metrics, seconds, child.info.run_id, model_uri=model_uri, **extra)
        self.ctx.log.info(
            "candidate",
            name=name,
            rmse=round(metrics["rmse"], 3),
            mae=round(metrics["mae"], 3),
            fit_s=round(seconds, 1),
        )
        self.candidates.append(cand)
        return cand

    def input_example(self):
        if self.example is None:
            self.example = self.valid.select(*MODEL_FEATURES).limit(5).toPandas()
        return self.example

    def close(self) -> None:
        for frame in (self.train_vec, self.train, self.valid):
            frame.unpersist()


def train_candidates(ctx: RunContext, bake: Bakeoff, parent_run_id: str, champion, champion_mv) -> dict:
    """Baselines, each learner (scratch, tuned, warm-started) and the ensemble, into the bake-off; returns the
    tuning results."""
    spark, cfg = ctx.spark, ctx.settings.train
    if cfg.baselines:
        for name, baseline in (
            ("baseline-zone-pair-median", zone_pair_median),
            ("baseline-linear-pu-do-distance", linear_zone_pair_distance),
        ):
            t = time.monotonic()
            bake.evaluate(name, "baseline", baseline(bake.train, bake.valid), time.monotonic() - t)
    tuned = tuning.tune_learners(
        spark, ctx.settings, bake.train, bake.data.train_months, bake.workers, bake.mlflow.active_run(), ctx.log
    )
    for name, learner, params, init, rows in candidate_plans(
        ctx.settings, bake.data, bake.train, champion, champion_mv, ctx.log, tuned
    ):
        group = f"train-{name}-{parent_run_id[:8]}"
        spark.sparkContext.setJobGroup(group, group)
        t = time.monotonic()
        model, info = fit_model(
            ctx.settings, learner, rows, params, bake.workers, init, bake.train_vec if rows is bake.train else None
        )
        seconds = time.monotonic() - t
        spark.sparkContext.setJobGroup("", "")
        bake.evaluate(
            name,
            learner,
            predict_minutes(bake.valid, model, KEEP),
            seconds,
            model=model,
            warm_start=init is not None,
            params=params,
            train_tasks=barrier_tasks(spark, group),
            train_data=rows,
            fit_info=info,
        )
    members = ensemble_members(bake.candidates) if cfg.ensemble else []
    if members:  # the mean of the best boosted models on the log scale: the gate keeps it only if it wins
        model = NativeModel.ensemble([m.model for m in members])
        bake.evaluate(
            ENSEMBLE,
            "ensemble",
            predict_minutes(bake.valid, model, KEEP),
            sum(m.fit_seconds for m in members),
            model=model,
            params={"members": ",".join(m.name for m in members)},
            members=members,
        )
    return tuned


def candidate_plans(settings: Settings, data: TrainingData, train, champion, champion_mv, log, tuned=None):
    """(name, learner, params, init model, rows) per candidate: each learner from scratch on the window, with its
    tuned parameters when a search ran, and the champion continued on the training months it has not seen (none
    left: no warm start)."""
    from pyspark.sql import functions as F

    cfg = settings.train
    plans = [
        (f"{learner}-scratch", learner, learner_params(settings, learner), None, train) for learner in cfg.learners
    ]
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
    return [
        *plans,
        (f"{champion.flavor}-warm-start", champion.flavor, params, champion, train.where(F.col("month").isin(unseen))),
    ]


@dataclass
class TrainingData:
    train: Any
    valid: Any
    valid_all: Any  # every validation-month row, in training range or not (the monitoring reference)
    train_months: list[str]
    valid_month: str
    features_version: int
    features_path: str
