"""What the benchmarks measure, each against a baseline in the same run: the pipeline's stages, scoring against bare
prediction, validation against a plain filter, the distributed learners against one process, tuning's layouts."""

from __future__ import annotations

import os
import threading
import time

from jobs.platform import storage

TRAIN_MONTH = "2024-01"  # 0.25M rows: the first champion trains on it; benchmark months follow it, one per size
TRAIN_COMPARISON_MAX_ROWS = 1_000_000  # learners vs single process: on the largest month up to a yellow-sized one
QUICK_ROUNDS = 100  # --quick: boosting rounds of every model (the full run uses conf's production settings)


class PeakMemory:
    """Peak RSS of this process and its children (the Spark driver JVM, which holds the local executors)."""

    def __init__(self, every_s: float = 0.5):
        import psutil

        self.proc, self.every_s, self.peak, self._stop = psutil.Process(), every_s, 0, threading.Event()

    def _rss(self) -> int:
        total = self.proc.memory_info().rss
        for child in self.proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except Exception:
                pass
        return total

    def __enter__(self):
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self):
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return round(self.peak / 2**20, 1)


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    with PeakMemory() as mem:
        out = fn(*args, **kwargs)
    return out, time.perf_counter() - t, mem.peak_mib


def bench_settings(work, rounds: int | None = None):
    """The project's settings on a throwaway lakehouse; ``rounds`` caps both learners' boosting rounds."""
    from jobs.platform.config import load_settings

    env = dict(os.environ)
    env.update(
        {
            "TAXI_LAKEHOUSE": str(work),
            "TAXI__SPARK__MASTER": "local[2]",
            "TAXI__SPARK__CONF__spark.driver.memory": "8g",
            "TAXI__SPARK__CONF__spark.ui.enabled": "false",
            "TAXI__TRAIN__REFIT": "false",
            # The benchmark months grow 4x and 3x (or shrink, after a larger training month) on purpose: not a sign
            # of a wrong file.
            "TAXI__VALIDATION__MIN_ROWS_VS_PREVIOUS": "0",
            "TAXI__VALIDATION__MAX_ROWS_VS_PREVIOUS": "100",
            "TAXI__TRAIN__WARM_START": "false",
        }
    )
    if rounds:
        env["TAXI__TRAIN__XGBOOST__n_estimators"] = str(rounds)
        env["TAXI__TRAIN__LIGHTGBM__numIterations"] = str(rounds)
    if not storage.is_remote(work):  # a local bench keeps its own MLflow store; an object store needs the server
        env.pop("MLFLOW_TRACKING_URI", None)
    return load_settings(env=env)


def run_pipeline(spark, settings, month: str, source: str) -> dict:
    from jobs.features import job as features
    from jobs.ingest import job as ingest
    from jobs.validation import job as validate

    stages = {}
    for name, fn, args in (
        ("ingest", ingest.run, (spark, settings, "yellow", month, source)),
        ("validate", validate.run, (spark, settings, "yellow", month)),
        ("features", features.run, (spark, settings, "yellow", month)),
    ):
        _, seconds, mem = timed(fn, *args)
        stages[name] = {"seconds": round(seconds, 2), "peak_mib": mem}
    return stages


def plain_filter_seconds(spark, settings, month: str) -> float:
    """The same row rules as one plain Spark aggregation (no GX): the baseline for validation cost."""
    from jobs.platform import lakehouse
    from jobs.validation import job as validate

    bronze = lakehouse.read_partition(spark, settings, lakehouse.BRONZE, "yellow", month)
    suite = validate.Suite.load("yellow", "rows")
    t = time.perf_counter()
    checked = validate.flag_failures(validate.add_rule_columns(bronze), suite, validate.row_params(settings, month))
    validate._rule_counts(checked, suite)
    return time.perf_counter() - t


def scoring_vs_bare(spark, settings, month: str) -> dict:
    """The score job against bare prediction of the same champion: every model it predicts with (the ensemble's
    members and the interval's two quantile models), on the same rows, with as many threads as task slots; and the
    same bare prediction with the version's compiled LightGBM trees instead of its LightGBM boosters."""
    from jobs.models import compiled
    from jobs.models.interval import load_interval
    from jobs.models.prediction import predict_minutes
    from jobs.models.registry import load_registered
    from jobs.platform import lakehouse
    from jobs.scoring import job as score

    model, version = load_registered(settings, "yellow", alias="champion")
    interval = load_interval(version.tags["interval_uri"]) if version.tags.get("interval_uri") else None
    predicts_with = compiled.attach(version, model, interval)  # what the score job predicts with
    feats = lakehouse.read_partition(spark, settings, lakehouse.FEATURES, "yellow", month)
    rows = feats.count()
    # 1) the whole score job: read Delta, predict, write Delta, read back for the summary.
    _, job_s, job_mem = timed(score.run, spark, settings, "yellow", month)
    # 2) the prediction pass alone, on Spark (read + predict, written to the no-op sink).
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(settings.score.batch_size))
    t = time.perf_counter()
    predict_minutes(feats, model, ["trip_id"], interval=interval).write.format("noop").mode("overwrite").save()
    predict_s = time.perf_counter() - t
    # 3) bare: the same rows as one matrix in this process, every model predicted with the slots' threads.
    matrix = feature_rows(feats)
    bare_s = bare_predict_seconds(model, interval, matrix, threads=slots(settings))
    # 4) the same with the compiled trees: XGBoost predicts as in 3), each LightGBM booster from its library.
    compiled_s = bare_predict_seconds(model, interval, matrix, threads=slots(settings), compiled_trees=True)
    models = [m.flavor for m in model.members] + (["lightgbm quantile"] * 2 if interval else [])
    return {
        "rows": rows,
        "flavor": model.flavor,
        "models": models,
        "score_job_seconds": round(job_s, 2),
        "score_job_peak_mib": job_mem,
        "spark_predict_seconds": round(predict_s, 2),
        "bare_predict_seconds": round(bare_s, 3),
        "score_job_rows_per_s": round(rows / job_s),
        "spark_predict_rows_per_s": round(rows / predict_s),
        "bare_predict_rows_per_s": round(rows / bare_s),
        "predicts_with": predicts_with,
        "compiled_predict_seconds": round(compiled_s, 3),
        "compiled_predict_rows_per_s": round(rows / compiled_s),
    }


def slots(settings) -> int:
    """Task slots of a local master (`local[N]`): the threads a fair single-process baseline gets."""
    import re

    found = re.fullmatch(r"local\[(\d+)\]", settings.spark.master)
    return int(found.group(1)) if found else os.cpu_count() or 1


def feature_rows(feats):
    """The features of a Spark DataFrame as one float32 matrix in this process (nulls as NaN)."""
    from jobs.models.inputs import MODEL_FEATURES
    from jobs.models.prediction import feature_matrix

    return feature_matrix(feats.select(*MODEL_FEATURES).toPandas())


def bare_predict_seconds(model, interval, matrix, threads: int, compiled_trees: bool = False) -> float:
    """Seconds to predict ``matrix`` with every model of a champion directly on its boosters (in place, ``threads``
    threads), including what the score job computes from them: minutes, the ensemble's mean, the interval.
    ``compiled_trees``: LightGBM boosters predict from their compiled libraries (``jobs.models.compiled``) instead."""
    import numpy as np

    from jobs.models import compiled

    def predictor(m):
        if compiled_trees and m.compiled is not None:
            predict = compiled.predictor(m.payload, *m.compiled, threads=threads)
            if predict is None:
                raise RuntimeError(f"trees compiled for {m.compiled[0]} cannot run on {compiled.host_platform()}")
            return predict
        if m.flavor == "xgboost":
            booster = m.booster()
            booster.set_param({"nthread": threads})
            return booster.inplace_predict
        if m.flavor == "lightgbm":
            booster = m.booster()
            return lambda x: booster.predict(x, num_threads=threads)
        return m.predictor()  # a network predicts with its own thread pool

    members = [predictor(m) for m in model.members]
    bounds = [predictor(m) for m in (interval.lower, interval.upper)] if interval else []
    t = time.perf_counter()
    point = np.clip(np.expm1(np.mean([p(matrix) for p in members], axis=0)), 0.0, None)
    if interval:
        interval.bounds(point, *(p(matrix) for p in bounds))
    return time.perf_counter() - t


def monitoring_cost(spark, settings, month: str) -> dict:
    """Every complete week of the month through the monitor, oldest first: the metric tables' share of each run
    (its own timing, ``metric_tables_seconds``) against the rest of the run. The month's first week also writes the
    month's rows; the later weeks write their own only."""
    from jobs.monitoring import job as monitor
    from jobs.monitoring.weeks import complete_weeks

    weeks = []
    for week in complete_weeks([month]):
        summary, run_s, mem = timed(monitor.run, spark, settings, "yellow", week)
        tables_s = summary["metric_tables_seconds"]
        weeks.append({"week": week, "monitor_seconds": round(run_s, 2), "peak_mib": mem, "tables_seconds": tables_s})

    def vs_rest(measured: list[dict]) -> float:  # the tables' seconds over the rest of the same runs
        tables = sum(w["tables_seconds"] for w in measured)
        return round(tables / max(sum(w["monitor_seconds"] for w in measured) - tables, 1e-9), 3)

    return {"weeks": weeks, "first_week_ratio": vs_rest(weeks[:1]), "metric_tables_vs_monitor_ratio": vs_rest(weeks)}


def bench_month(index: int) -> str:
    """Months follow TRAIN_MONTH without gaps, so every one has its previous month for a train/validation split."""
    return f"2024-{2 + index:02d}"


def comparison_month(sizes: list[int], train_rows: int = 250_000) -> str:
    """`until` for the training comparison: the month after the largest month of at most
    TRAIN_COMPARISON_MAX_ROWS rows (that month is then the training data)."""
    months = [(train_rows, TRAIN_MONTH)] + [(rows, bench_month(i)) for i, rows in enumerate(sizes)]
    best = max((r, i) for i, (r, _) in enumerate(months[:-1]) if r <= TRAIN_COMPARISON_MAX_ROWS)[1]
    return months[best + 1][1]


def training_vs_single(spark, settings, until: str) -> dict:
    """Distributed fit (2 barrier workers) vs single-process xgboost/lightgbm with 2 threads, same data/params:
    the month before ``until`` is the training data."""
    import lightgbm as lgb
    import numpy as np
    import xgboost as xgb

    from jobs.models.inputs import MODEL_FEATURES, TARGET
    from jobs.training import job as train
    from jobs.training.learners import assemble, fit_lightgbm, fit_xgboost

    data = train.load_training_data(spark, settings, "yellow", until, 2)
    train_df = data.train.cache()
    rows = train_df.count()
    vec = assemble(train_df).cache()
    vec.count()
    pdf = train_df.select(*MODEL_FEATURES, TARGET).toPandas()
    x = pdf[MODEL_FEATURES].astype("float64").to_numpy(np.float32, na_value=np.nan)
    y = np.log1p(pdf[TARGET].to_numpy())
    xp, lp = settings.train.xgboost, settings.train.lightgbm
    out = {"rows": rows, "train_months": data.train_months}
    single_xgb = {
        "max_depth": xp["max_depth"],
        "eta": xp["learning_rate"],
        "min_child_weight": xp["min_child_weight"],
        "subsample": xp["subsample"],
        "colsample_bytree": xp["colsample_bytree"],
        "nthread": 2,
    }
    single_lgbm = {
        "num_leaves": lp["numLeaves"],
        "learning_rate": lp["learningRate"],
        "min_data_in_leaf": lp["minDataInLeaf"],
        "feature_fraction": lp["featureFraction"],
        "bagging_fraction": lp["baggingFraction"],
        "bagging_freq": lp["baggingFreq"],
        "lambda_l2": lp["lambdaL2"],
        "num_threads": 2,
        "verbosity": -1,
        "objective": "regression",
    }
    fits = {  # learner: (distributed fit, the same fit in one process), timed in this order
        "xgb": (
            lambda: fit_xgboost(vec, dict(xp), 2, 42),
            lambda: xgb.train(single_xgb, xgb.DMatrix(x, label=y, missing=np.nan), xp["n_estimators"]),
        ),
        "lgbm": (
            lambda: fit_lightgbm(vec, dict(lp), 2, 42),
            lambda: lgb.train(single_lgbm, lgb.Dataset(x, label=y), lp["numIterations"]),
        ),
    }
    for learner, sides in fits.items():
        for side, fit in zip(("spark", "single"), sides, strict=True):
            _, s, mem = timed(fit)
            out[f"{learner}_{side}_seconds"], out[f"{learner}_{side}_peak_mib"] = round(s, 2), mem
    vec.unpersist()
    train_df.unpersist()
    return out


def overlapping(trials: list[dict]) -> int:
    """Pairs of trials whose [start, end] overlap: > 0 shows trials ran at the same time."""
    return sum(a["start"] < b["end"] and b["start"] < a["end"] for i, a in enumerate(trials) for b in trials[i + 1 :])


def tuning_parallel_vs_distributed(spark, settings, service: str, until: str, months: int, trials: int = 4) -> dict:
    """`taxi train --tune`: the same trials one at a time, each a fit over both task slots (parallel_trials 1),
    against two at a time over one slot each (parallel_trials 2); xgboost, same seed and search space."""
    import mlflow

    from jobs.platform.log import JobLog
    from jobs.platform.tracking import experiment_id, setup_mlflow
    from jobs.training import job as train
    from jobs.training import tuning

    data = train.load_training_data(spark, settings, service, until, months)
    rows = data.train.cache()
    rows.count()
    setup_mlflow(settings)
    out = {"trials": trials, "train_months": data.train_months}
    with mlflow.start_run(experiment_id=experiment_id(settings, "bench-tuning")) as parent:
        for learner in ("xgboost", "lightgbm"):
            for parallel in (1, 2):
                s = settings.model_copy(deep=True)
                s.train.tune.parallel_trials = parallel
                search = tuning.Search(spark, s, parent, 2, JobLog("bench-tune", service, until))
                result, seconds, mem = timed(tuning.tune, search, learner, rows, data.train_months, trials, None)
                out[f"{learner}_parallel_{parallel}"] = {
                    "seconds": round(seconds, 2),
                    "peak_mib": mem,
                    "best_tuning_rmse": round(result.tuning_rmse, 4),
                    "overlapping_trials": overlapping(result.trials),
                }
            out[f"{learner}_parallel_2_vs_1_time_ratio"] = round(
                out[f"{learner}_parallel_2"]["seconds"] / out[f"{learner}_parallel_1"]["seconds"], 2
            )
    rows.unpersist()
    return out
