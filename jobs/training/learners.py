"""The learners: xgboost.spark and SynapseML LightGBM, each a barrier stage with one task per worker, trained on
``log1p(minutes)`` from one assembled vector column; and the deep challenger (``deep.py``), trained on the driver."""

from __future__ import annotations

from typing import Any

from jobs.models.flavors import NativeModel
from jobs.models.inputs import MODEL_FEATURES, TARGET
from jobs.models.prediction import predict_minutes
from jobs.platform.spark import executor_cores


def learner_params(settings, learner: str) -> dict[str, Any]:
    """The configured hyperparameters of ``learner`` (what its candidate logs as ``hp_*``)."""
    cfg = settings.train
    if learner == "deep":
        return cfg.deep.model_dump()
    return cfg.xgboost if learner == "xgboost" else cfg.lightgbm


def fit_model(
    settings, learner: str, rows, params: dict[str, Any], workers: int, init: NativeModel | None = None, assembled=None
) -> tuple[NativeModel, dict[str, Any]]:
    """One candidate's model fitted on ``rows`` (``assembled``: those rows already assembled, shared by candidates),
    continuing ``init`` when given; returns it with what the fit reports (the network's sample and epochs)."""
    seed = settings.train.seed
    if learner == "deep":
        from jobs.training.deep import fit_deep

        return fit_deep(rows, settings.train.deep, seed)
    if init is not None and learner == "lightgbm":
        data = with_init_score(rows, init)
    else:
        data = assembled if assembled is not None else assemble(rows)
    fit = fit_xgboost if learner == "xgboost" else fit_lightgbm
    return NativeModel.from_booster(fit(data, dict(params), workers, seed, init)), {}


def assemble(df, extra: tuple[str, ...] = ()):
    """Model inputs as one vector column (nulls kept as NaN: both learners treat them as missing) + log label."""
    from pyspark.ml.feature import VectorAssembler
    from pyspark.sql import functions as F

    cast = df.select(
        *[F.col(c).cast("double").alias(c) for c in MODEL_FEATURES], F.log1p(TARGET).alias("label"), *extra
    )
    return VectorAssembler(inputCols=MODEL_FEATURES, outputCol="features", handleInvalid="keep").transform(cast)


def fit_xgboost(train_vec, params: dict[str, Any], num_workers: int, seed: int, init: NativeModel | None = None):
    from xgboost.spark import SparkXGBRegressor

    est = SparkXGBRegressor(
        features_col="features",
        label_col="label",
        num_workers=num_workers,
        missing=float("nan"),
        random_state=seed,
        xgb_model=_unnamed(init.booster()) if init else None,
        verbose=False,  # no evaluation line per boosting round from every worker
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
    from jobs.models.inputs import PREDICTION

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
