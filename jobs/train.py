"""Train: distributed XGBoost (xgboost.spark) and LightGBM (SynapseML) on a window of feature months, tracked in
MLflow, with a registry gate that promotes a candidate to ``champion`` only when it beats the current one.

Window: the ``--months`` feature months up to and including ``--until``; the last month present is the
validation month (a time-based split), the earlier ones are the training months. Rows are filtered to the
training range (``in_training_range``) here and only here. The target is learned as ``log1p(minutes)``.

Candidates: each learner from scratch and, when a champion of the same learner exists, warm-started from it
("fine-tuning the pre-trained model": more boosting rounds on the new window). Two baselines are logged on the
same split for reference: the zone-pair median and a linear regression on zone pair + distance. The best
candidate is registered; the gate compares it with the champion re-scored on the same validation month.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import lakehouse
from .config import PROJECT_ROOT, Settings
from .errors import MissingUpstream
from .features import MODEL_FEATURES, TARGET
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
from .months import check_month, check_service, month_window
from .spark import executor_cores, free_task_slots

KEEP = ["trip_id", "pu_borough", "pickup_hour", TARGET]


@dataclass
class TrainingData:
    train: Any
    valid: Any
    train_months: list[str]
    valid_month: str
    features_version: int
    features_path: str


@dataclass
class Candidate:
    name: str
    learner: str  # xgboost | lightgbm | baseline
    metrics: dict[str, float]
    fit_seconds: float
    run_id: str
    model: NativeModel | None = None
    model_uri: str | None = None
    warm_start: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    train_tasks: int = 0

    @property
    def rmse(self) -> float:
        return self.metrics["rmse"]


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


def assemble(df, extra: tuple[str, ...] = ()):
    """Model inputs as one vector column (nulls kept as NaN: both learners treat them as missing) + log label."""
    from pyspark.ml.feature import VectorAssembler
    from pyspark.sql import functions as F

    cast = df.select(
        *[F.col(c).cast("double").alias(c) for c in MODEL_FEATURES], F.log1p(TARGET).alias("label"), *extra
    )
    return VectorAssembler(inputCols=MODEL_FEATURES, outputCol="features", handleInvalid="keep").transform(cast)


# ---------------------------------------------------------------------------------------------------------------
# Learners (distributed: barrier stages with one task per worker)
# ---------------------------------------------------------------------------------------------------------------
def fit_xgboost(train_vec, params: dict[str, Any], num_workers: int, seed: int, init: NativeModel | None = None):
    from xgboost.spark import SparkXGBRegressor

    est = SparkXGBRegressor(
        features_col="features",
        label_col="label",
        num_workers=num_workers,
        missing=float("nan"),
        random_state=seed,
        xgb_model=_unnamed(init.booster()) if init else None,
        **params,
    )
    booster = est.fit(train_vec).get_booster()
    booster.feature_names = list(MODEL_FEATURES)
    return booster


def _unnamed(booster):
    """xgboost.spark trains on unnamed vector columns: drop the stored names before continuing a booster."""
    booster.feature_names = None
    return booster


def fit_lightgbm(train_vec, params: dict[str, Any], num_workers: int, seed: int, init: NativeModel | None = None):
    import lightgbm as lgb
    from synapse.ml.lightgbm import LightGBMRegressor

    # Single-dataset mode merges an executor's tasks into one native dataset and one LightGBM learner; SynapseML
    # gives that learner spark.task.cpus threads (1) unless numThreads says otherwise, so the default is all the
    # executor's cores.
    est = LightGBMRegressor(
        featuresCol="features",
        labelCol="label",
        numTasks=num_workers,
        useBarrierExecutionMode=True,
        useSingleDatasetMode=True,
        seed=seed,
        verbosity=-1,
        **{"numThreads": executor_cores(train_vec.sparkSession), **params},
    )
    if init is not None:
        # Continue the champion: its trees are kept (modelString) and the new trees fit what it leaves unexplained,
        # starting from its log-scale predictions (initScoreCol); without them LightGBM would boost from the mean
        # and the merged model would count the target twice.
        est = est.setModelString(init.payload).setInitScoreCol("init_score")
    return lgb.Booster(model_str=est.fit(train_vec).getNativeModel())


def with_init_score(df, init: NativeModel):
    """Assembled training data plus ``init_score``: the champion's log-scale prediction for each row."""
    from .modeling import PREDICTION

    scored = predict_minutes(df, init, [*MODEL_FEATURES, TARGET], log_scale=True)
    return assemble(scored.withColumnRenamed(PREDICTION, "init_score"), extra=("init_score",))


def barrier_tasks(spark, group: str) -> int:
    """The largest number of tasks in one stage of the jobs run under ``group`` (the learners' worker count)."""
    tracker = spark.sparkContext.statusTracker()
    tasks = [0]
    for job_id in tracker.getJobIdsForGroup(group):
        info = tracker.getJobInfo(job_id)
        for sid in info.stageIds if info else []:
            stage = tracker.getStageInfo(sid)
            if stage:
                tasks.append(stage.numTasks)
    return max(tasks)


# ---------------------------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------------------------
def zone_pair_median(train, valid):
    """Predict the training median duration of the zone pair (global median for unseen pairs)."""
    from pyspark.sql import functions as F

    pair = train.groupBy("PULocationID", "DOLocationID").agg(F.median(TARGET).alias("pair_median"))
    overall = train.agg(F.median(TARGET)).first()[0]
    return valid.join(F.broadcast(pair), ["PULocationID", "DOLocationID"], "left").withColumn(
        PREDICTION, F.coalesce("pair_median", F.lit(overall))
    )


def linear_zone_pair_distance(train, valid):
    """Spark ML linear regression on the one-hot zone pair + trip distance (the classic course baseline)."""
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import OneHotEncoder, StringIndexer, VectorAssembler
    from pyspark.ml.regression import LinearRegression
    from pyspark.sql import functions as F

    def prep(df):
        return df.withColumn("pu_do", F.concat_ws("_", "PULocationID", "DOLocationID")).withColumn(
            "distance", F.coalesce(F.col("trip_distance"), F.lit(0.0))
        )

    pipeline = Pipeline(
        stages=[
            StringIndexer(inputCol="pu_do", outputCol="pu_do_idx", handleInvalid="keep"),
            OneHotEncoder(inputCols=["pu_do_idx"], outputCols=["pu_do_vec"], handleInvalid="keep"),
            VectorAssembler(inputCols=["pu_do_vec", "distance"], outputCol="lin_features"),
            LinearRegression(featuresCol="lin_features", labelCol=TARGET, predictionCol=PREDICTION, regParam=0.01),
        ]
    )
    model = pipeline.fit(prep(train))
    return model.transform(prep(valid)).withColumn(PREDICTION, F.greatest(F.col(PREDICTION), F.lit(0.0)))


# ---------------------------------------------------------------------------------------------------------------
# MLflow artifacts
# ---------------------------------------------------------------------------------------------------------------
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
        if model is not None:
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
    """Log the booster in its native MLflow flavour with signature and input example; returns the model URI."""
    import numpy as np
    from mlflow.models import infer_signature

    booster = model.booster()
    example = input_example[MODEL_FEATURES].astype("float64")
    from .modeling import feature_matrix, predict_log

    signature = infer_signature(example, np.asarray(predict_log(booster, model.flavor, feature_matrix(example))))
    flavor = mlflow.xgboost if model.flavor == "xgboost" else mlflow.lightgbm
    # Pinned from this environment: letting MLflow infer them starts a Python subprocess per logged model (seconds).
    import pandas as pd

    requirements = [*flavor.get_default_pip_requirements(), f"numpy=={np.__version__}", f"pandas=={pd.__version__}"]
    info = flavor.log_model(
        booster, name="model", signature=signature, input_example=example, pip_requirements=requirements
    )
    return info.model_uri


# ---------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------
def run(spark, settings: Settings, service: str, until: str, months: int | None = None) -> dict[str, Any]:
    check_service(service)
    if until == "latest":
        until = latest_feature_month(spark, settings, service)
    check_month(until)
    cfg = settings.train
    log = JobLog("train", service, until)
    mlflow = setup_mlflow(settings)
    data = load_training_data(spark, settings, service, until, months or cfg.months)
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
    try:
        champion, champion_mv = load_registered(settings, service, alias="champion")
    except MissingUpstream:
        champion, champion_mv = None, None
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
            }
        )

        def evaluate(name: str, learner: str, predictions, seconds: float, **extra) -> Candidate:
            nonlocal sample
            metrics = full_metrics(predictions)
            with mlflow.start_run(run_name=name, nested=True) as child:
                mlflow.set_tags({"learner": learner, "service": service, "warm_start": extra.get("warm_start", False)})
                mlflow.log_params({f"hp_{k}": v for k, v in extra.get("params", {}).items()})
                mlflow.log_metrics({**metrics, "fit_seconds": seconds, "train_tasks": extra.get("train_tasks", 0)})
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

        fits = {"xgboost": (fit_xgboost, cfg.xgboost), "lightgbm": (fit_lightgbm, cfg.lightgbm)}
        plans = [(learner, *fits[learner], None) for learner in cfg.learners]
        if champion is not None and cfg.warm_start:
            learner = champion.flavor
            fit = fit_xgboost if learner == "xgboost" else fit_lightgbm
            params = dict(cfg.xgboost if learner == "xgboost" else cfg.lightgbm)
            rounds_key = "n_estimators" if learner == "xgboost" else "numIterations"
            params[rounds_key] = cfg.warm_start_rounds
            plans.append((learner, fit, params, champion))
        for learner, fit, params, init in plans:
            group = f"train-{learner}-{'warm' if init else 'scratch'}-{parent.info.run_id[:8]}"
            spark.sparkContext.setJobGroup(group, group)
            t = time.monotonic()
            data_vec = train_vec if init is None or learner == "xgboost" else with_init_score(train, init)
            booster = fit(data_vec, dict(params), workers, cfg.seed, init)
            seconds = time.monotonic() - t
            spark.sparkContext.setJobGroup("", "")
            model = NativeModel.from_booster(booster)
            evaluate(
                f"{learner}-{'warm-start' if init else 'scratch'}",
                learner,
                predict_minutes(valid, model, KEEP),
                seconds,
                model=model,
                warm_start=init is not None,
                params=params,
                train_tasks=barrier_tasks(spark, group),
            )

        models = [c for c in candidates if c.model is not None]
        if not models:
            raise ValueError("train.learners is empty and there is no champion to warm-start: nothing to train")
        best = min(models, key=lambda c: c.rmse)
        if cfg.refit:
            best = refit(spark, mlflow, settings, best, train, valid, workers, champion, log)
        decision = gate(mlflow, settings, service, best, champion, champion_mv, valid, data.valid_month)
        mlflow.log_dict({c.name: {"rmse": c.rmse, "mae": c.metrics["mae"], "rmsle": c.metrics["rmsle"],
                                  "fit_seconds": c.fit_seconds} for c in candidates}, "candidates.json")  # fmt: skip
        mlflow.set_tags({k: str(v) for k, v in decision.items()})
        mlflow.log_metric("best_rmse", min(c.rmse for c in candidates if c.model is not None))
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
    }
    log.info("done", **{k: v for k, v in decision.items()}, duration_s=round(log.elapsed(), 1))
    return summary


def refit(spark, mlflow, settings: Settings, best: Candidate, train, valid, workers: int, champion, log) -> Candidate:
    """Refit the chosen learner on train + validation months (the model to register).

    Its validation metrics stay those of the pre-refit fit: the refit model has seen the validation month.
    """
    cfg = settings.train
    fit = fit_xgboost if best.learner == "xgboost" else fit_lightgbm
    t = time.monotonic()
    both = train.unionByName(valid)
    init = champion if best.warm_start else None
    data = with_init_score(both, init) if init is not None and best.learner == "lightgbm" else assemble(both)
    booster = fit(data, dict(best.params), workers, cfg.seed, init)
    seconds = time.monotonic() - t
    model = NativeModel.from_booster(booster)
    with mlflow.start_run(run_name=f"{best.name}-refit", nested=True) as child:
        mlflow.set_tags({"learner": best.learner, "refit_of": best.run_id, "warm_start": best.warm_start})
        mlflow.log_params({f"hp_{k}": v for k, v in best.params.items()})
        mlflow.log_metrics({**{f"prerefit_{k}": v for k, v in best.metrics.items()}, "fit_seconds": seconds})
        uri = log_native_model(mlflow, model, valid.select(*MODEL_FEATURES).limit(5).toPandas())
    log.info("refit", name=best.name, fit_s=round(seconds, 1))
    return Candidate(f"{best.name}-refit", best.learner, best.metrics, seconds, child.info.run_id, model, uri,
                     best.warm_start, best.params)  # fmt: skip


def gate_decision(candidate_rmse: float, champion_rmse: float | None, margin: float,
                  champion_version: str | int | None = None, valid_month: str = "") -> tuple[bool, str]:  # fmt: skip
    """(promote?, reason): the first model is promoted; later ones only if strictly better by ``margin`` minutes."""
    if champion_rmse is None:
        return True, "first model"
    if candidate_rmse < champion_rmse - margin:
        return True, f"rmse {candidate_rmse:.4f} < champion {champion_rmse:.4f} - {margin}"
    return False, (
        f"rmse {candidate_rmse:.4f} does not beat champion v{champion_version} ({champion_rmse:.4f}) "
        f"by margin {margin} on {valid_month}"
    )


def gate(mlflow, settings: Settings, service: str, best: Candidate, champion, champion_mv, valid,
         valid_month: str) -> dict[str, Any]:  # fmt: skip
    """Register the best learner; give it the champion alias only if it beats the champion by the margin."""
    from .modeling import regression_metrics

    client = mlflow.MlflowClient()
    name = settings.registered_model(service)
    mv = mlflow.register_model(best.model_uri, name)
    tags = {
        "flavor": best.model.flavor,
        "candidate": best.name,
        "warm_start": str(best.warm_start),
        "valid_month": valid_month,
        "val_rmse": f"{best.rmse:.4f}",
        "target_transform": "log1p",
        "features": ",".join(MODEL_FEATURES),
        "training_run_id": best.run_id,
    }
    for k, v in tags.items():
        client.set_model_version_tag(name, mv.version, k, v)
    champion_rmse = None
    if champion is not None:
        champion_rmse = regression_metrics(predict_minutes(valid, champion, KEEP))["rmse"]
    promoted, reason = gate_decision(
        best.rmse, champion_rmse, settings.train.margin, champion_mv.version if champion_mv else None, valid_month
    )
    if promoted:
        client.set_registered_model_alias(name, "champion", mv.version)
        client.set_model_version_tag(name, mv.version, "gate", "promoted")
    else:
        client.set_model_version_tag(name, mv.version, "gate", "rejected")
        client.set_model_version_tag(name, mv.version, "rejected_reason", reason)
    return {
        "registered_model": name,
        "registered_version": int(mv.version),
        "best_candidate": best.name,
        "best_rmse": round(best.rmse, 4),
        "champion_rmse_before": round(champion_rmse, 4) if champion_rmse is not None else None,
        "promoted": promoted,
        "gate_reason": reason,
        "champion_version": int(mv.version) if promoted else int(champion_mv.version),
    }
