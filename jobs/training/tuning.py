"""`taxi train --tune N`: a hyperparameter search per learner with Optuna's TPE sampler, every trial a Spark fit.

Honest split: a trial trains on the training months but the last and stops early on that last month (the tuning
month); the gate's validation month takes no part in the search. The best trial's parameters, with the rounds
early stopping chose, become the ``<learner>-tuned`` candidate, fitted on every training month like the others.

``train.tune.parallel_trials: k`` runs k trials at once (Optuna threads, each with its own Spark job group), each a
fit over ``workers // k`` barrier tasks; k = 1 makes every trial one distributed fit over all free task slots.
Every trial is a nested MLflow run of the training run, created through the client (thread safe) with its
parameters, tuning-month RMSE, rounds, workers and start/end times: overlapping times are trials run together.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from jobs.models.flavors import NativeModel
from jobs.models.inputs import TARGET
from jobs.models.metrics import regression_metrics
from jobs.models.prediction import predict_minutes
from jobs.platform.config import SearchDim, Settings
from jobs.platform.errors import InputError
from jobs.training.learners import assemble, fit_lightgbm, fit_xgboost

ROUNDS = {"xgboost": "n_estimators", "lightgbm": "numIterations"}
TUNE_FLAG = "is_tuning_month"


@dataclass
class TuneResult:
    learner: str
    params: dict[str, Any]  # the learner's params with the best trial's values and rounds: the tuned candidate's
    tuning_rmse: float  # the best trial's RMSE (minutes) on the tuning month
    tuning_month: str
    trials: list[dict[str, Any]] = field(default_factory=list)


def check_window(settings: Settings, train_months: list[str]) -> None:
    """Refuse a search the window cannot hold, before anything is trained or logged."""
    tcfg = settings.train.tune
    if (tcfg.trials or tcfg.minutes) and len(train_months) < 2:
        raise InputError(
            f"--tune needs at least two training months (one to fit, the last to stop early on) besides the "
            f"validation month; the window has {train_months}: train with a longer --months or a later --until"
        )


def tuning_split(train, train_months: list[str]):
    """(rows with the tuning-month flag, tuning month): the last training month stops the trials early."""
    from pyspark.sql import functions as F

    return train.withColumn(TUNE_FLAG, F.col("month") == train_months[-1]), train_months[-1]


def suggest(trial, space: dict[str, SearchDim]) -> dict[str, Any]:
    """One trial's values for the learner's search space."""
    out: dict[str, Any] = {}
    for name, dim in space.items():
        if dim.choices is not None:
            out[name] = trial.suggest_categorical(name, dim.choices)
        elif dim.type == "int":
            out[name] = trial.suggest_int(name, int(dim.low), int(dim.high), log=dim.log)
        else:
            out[name] = trial.suggest_float(name, dim.low, dim.high, log=dim.log)
    return out


def early_stopping_params(learner: str, rounds: int) -> dict[str, Any]:
    if learner == "xgboost":
        return {"validation_indicator_col": TUNE_FLAG, "early_stopping_rounds": rounds}
    return {"validationIndicatorCol": TUNE_FLAG, "earlyStoppingRound": rounds, "metric": "rmse"}


def best_rounds(booster, learner: str, ceiling: int, patience: int) -> int:
    """Boosting rounds up to the best tuning-month score. xgboost records it; SynapseML keeps the ``patience``
    rounds after the best one, so a fit that stopped before the ceiling was best ``patience`` rounds earlier."""
    if learner == "xgboost":
        best = booster.attributes().get("best_iteration")
        return int(best) + 1 if best is not None else booster.num_boosted_rounds()
    grown = booster.num_trees()
    return max(1, grown - patience) if grown < ceiling else grown


def truncated(booster, learner: str, rounds: int) -> NativeModel:
    if learner == "xgboost":
        sliced = booster[:rounds]
        sliced.feature_names = booster.feature_names
        return NativeModel.from_booster(sliced)
    return NativeModel("lightgbm", booster.model_to_string(num_iteration=rounds))


@dataclass(frozen=True)
class Search:
    """Where a search runs: the session, the settings, the training run it logs under, its workers and log."""

    spark: Any
    settings: Settings
    parent_run: Any
    workers: int
    log: Any


def tune_learners(spark, settings: Settings, train, train_months: list[str], workers: int, parent_run, log):
    """{learner: TuneResult} for each of ``train.learners`` when a search is asked for (trials or minutes), else {}."""
    import mlflow

    tcfg = settings.train.tune
    if not (tcfg.trials or tcfg.minutes):
        return {}
    search = Search(spark, settings, parent_run, workers, log)
    out = {}
    for learner in [x for x in settings.train.learners if x in ROUNDS]:  # the boosters: the network is not searched
        out[learner] = tune(search, learner, train, train_months, tcfg.trials or None, tcfg.minutes)
        mlflow.log_metric(f"tuning_rmse_{learner}", out[learner].tuning_rmse)
    return out


def tuning_month(train_months: list[str], tuned: dict[str, TuneResult]) -> str | None:
    """The month the search stopped early on, when a search ran."""
    return train_months[-1] if tuned else None


def tune(
    search: Search, learner: str, train, train_months: list[str], trials: int | None, minutes: float | None
) -> TuneResult:
    """Search ``train.tune.space[learner]`` for ``trials`` trials or ``minutes``, whichever ends first."""
    import optuna

    cfg, tcfg = search.settings.train, search.settings.train.tune
    base = dict(cfg.xgboost if learner == "xgboost" else cfg.lightgbm)
    space = tcfg.space.get(learner) or {}
    if not space:
        raise InputError(f"--tune: train.tune.space has no search space for {learner}")
    rows, tuning_month = tuning_split(train, train_months)
    data = assemble(rows, extra=(TUNE_FLAG,)).cache()
    holdout = rows.where(TUNE_FLAG).cache()
    objective = Objective(search, learner, base, space, data, holdout)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=cfg.seed))
    try:
        study.optimize(
            objective, n_trials=trials, timeout=minutes * 60 if minutes else None, n_jobs=tcfg.parallel_trials
        )
    finally:
        data.unpersist()
        holdout.unpersist()
    records = [t.user_attrs["record"] for t in study.trials if "record" in t.user_attrs]
    best = min(records, key=lambda r: r["rmse"])
    return TuneResult(
        learner, {**base, **best["params"]}, best["rmse"], tuning_month, sorted(records, key=lambda r: r["trial"])
    )


@dataclass(frozen=True)
class Objective:
    """One trial: fit with the suggested parameters (early stopping on the tuning month), truncate to the best
    round, score the holdout; the trial's record goes on the trial itself (``user_attrs``) and to MLflow."""

    search: Search
    learner: str
    base: dict[str, Any]
    space: dict[str, SearchDim]
    data: Any  # the assembled rows, tuning month flagged
    holdout: Any  # the tuning month's rows

    def __call__(self, trial) -> float:
        import mlflow

        search, learner, tcfg = self.search, self.learner, self.search.settings.train.tune
        spark = search.spark
        slots = max(1, search.workers // tcfg.parallel_trials)
        fit = fit_xgboost if learner == "xgboost" else fit_lightgbm
        params = {**self.base, **suggest(trial, self.space)}
        group = f"tune-{learner}-{search.parent_run.info.run_id[:8]}-{trial.number}"
        spark.sparkContext.setJobGroup(group, group)  # thread-local: each parallel trial has its own group
        started = time.time()
        early = early_stopping_params(learner, tcfg.early_stopping_rounds)
        booster = fit(self.data, {**params, **early}, slots, search.settings.train.seed)
        ceiling = int(self.base.get(ROUNDS[learner], 100))
        rounds = best_rounds(booster, learner, ceiling, tcfg.early_stopping_rounds)
        rmse = regression_metrics(predict_minutes(self.holdout, truncated(booster, learner, rounds), [TARGET]))["rmse"]
        ended = time.time()
        spark.sparkContext.setJobGroup("", "")
        record = {
            "trial": trial.number,
            "rmse": rmse,
            "rounds": rounds,
            "workers": slots,
            "start": started,
            "end": ended,
            "params": {**suggest_only(params, self.space), ROUNDS[learner]: rounds},
        }
        trial.set_user_attr("record", record)
        log_trial(mlflow.MlflowClient(), search.parent_run, learner, record)
        search.log.info(
            "trial",
            learner=learner,
            trial=trial.number,
            rmse=round(rmse, 4),
            rounds=rounds,
            workers=slots,
            seconds=round(ended - started, 1),
        )
        return rmse


def suggest_only(params: dict[str, Any], space: dict[str, SearchDim]) -> dict[str, Any]:
    return {k: params[k] for k in space}


def log_trial(client, parent_run, learner: str, record: dict[str, Any]) -> None:
    """A nested MLflow run per trial (client calls: safe from Optuna's worker threads)."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    run = client.create_run(
        parent_run.info.experiment_id,
        start_time=int(record["start"] * 1000),
        run_name=f"{learner}-trial-{record['trial']}",
        tags={MLFLOW_PARENT_RUN_ID: parent_run.info.run_id, "learner": learner, "tuning": "trial"},
    )
    now = int(record["end"] * 1000)
    metrics = {
        "tuning_rmse": record["rmse"],
        "rounds": record["rounds"],
        "workers": record["workers"],
        "fit_seconds": record["end"] - record["start"],
    }
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if not math.isnan(v)],
        params=[Param(f"hp_{k}", str(v)) for k, v in record["params"].items()],
        tags=[RunTag("trial", str(record["trial"]))],
    )
    client.set_terminated(run.info.run_id, end_time=now)
