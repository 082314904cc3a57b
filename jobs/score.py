"""Score: predict every validated trip of a month with a registered model into ``gold/predictions``.

The model comes from the MLflow registry by alias (default ``champion``) or version, never from a local path.
Prediction runs in Arrow batches with the booster's in-place predict (see :mod:`jobs.modeling`). Rescoring a
month replaces its partition in one Delta commit; every row names the model version and the feature table
version it came from, so BI users can always tell which model produced a number.
"""

from __future__ import annotations

from typing import Any

from . import lakehouse
from .config import Settings
from .errors import MissingUpstream
from .features import TARGET
from .log import JobLog, spark_progress
from .modeling import PREDICTION, load_registered, metric_exprs, predict_minutes, setup_mlflow
from .months import check_month, check_service

KEEP = [
    "trip_id",
    "pickup_datetime",
    "PULocationID",
    "DOLocationID",
    "pu_zone",
    "do_zone",
    "pu_borough",
    "do_borough",
    "trip_distance",
    "pickup_hour",
    TARGET,
    "in_training_range",
]


def to_output(predictions, service: str, month: str, model_name: str, model_version: int, features_version: int,
              run_id: str):  # fmt: skip
    """Predictions -> the BI-facing schema of ``gold/predictions``."""
    from pyspark.sql import functions as F

    return predictions.select(
        "trip_id",
        F.col("pickup_datetime"),
        F.hour("pickup_datetime").alias("pickup_hour"),
        "PULocationID",
        "DOLocationID",
        F.col("pu_zone").alias("pickup_zone"),
        F.col("do_zone").alias("dropoff_zone"),
        F.col("pu_borough").alias("pickup_borough"),
        F.col("do_borough").alias("dropoff_borough"),
        "trip_distance",
        F.round(PREDICTION, 3).alias(PREDICTION),
        F.col(TARGET).alias("actual_duration_min"),
        "in_training_range",
        F.lit(model_name).alias("model_name"),
        F.lit(int(model_version)).alias("model_version"),
        F.lit(int(features_version)).alias("features_version"),
        F.current_timestamp().alias("scored_at"),
        F.lit(run_id).alias("scoring_run_id"),
        F.lit(service).alias("service"),
        F.lit(month).alias("month"),
    )


def run(spark, settings: Settings, service: str, month: str, alias: str | None = None,
        version: int | None = None, skip_if_no_model: bool = False) -> dict[str, Any]:  # fmt: skip
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    check_service(service)
    check_month(month)
    log = JobLog("score", service, month)
    setup_mlflow(settings)
    alias = None if version else (alias or settings.score.model_alias)
    try:
        model, mv = load_registered(settings, service, alias=alias, version=version)
    except MissingUpstream as e:
        if not skip_if_no_model:
            raise
        log.warning("skipped: no model to score with", reason=str(e))
        return {"skipped": True, "reason": str(e)}
    features_version = (
        lakehouse.current_version(spark, settings, lakehouse.FEATURES)
        if lakehouse.exists(settings, lakehouse.FEATURES)
        else None
    )
    lakehouse.read_partition(spark, settings, lakehouse.FEATURES, service, month, "taxi features")
    feats = lakehouse.read(spark, settings, lakehouse.FEATURES, features_version).where(
        lakehouse.partition_predicate(service, month)
    )
    log.info("model", name=mv.name, version=mv.version, flavor=model.flavor, alias=alias or "-",
             features_version=features_version)  # fmt: skip
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(settings.score.batch_size))
    run_id = lakehouse.new_run_id("score")
    out = to_output(predict_minutes(feats, model, KEEP), service, month, mv.name, mv.version, features_version, run_id)
    # Metrics are observed while the partition is written: no second pass over the predictions.
    observed = Observation(f"score-{run_id}")
    in_range = F.col("in_training_range")
    out = out.observe(observed, *metric_exprs(PREDICTION, "actual_duration_min"),
                      *metric_exprs(PREDICTION, "actual_duration_min", where=in_range, prefix="in_range_"))  # fmt: skip
    with spark_progress(spark, log):
        written = lakehouse.replace_partition(out, settings, lakehouse.PREDICTIONS, run_id, service, month)
    metrics = {k: (float("nan") if v is None else float(v)) for k, v in observed.get.items()}
    summary = {
        "rows": int(metrics["n"]),
        "model_name": mv.name,
        "model_version": int(mv.version),
        "features_version": features_version,
        "predictions_version": written,
        "rmse_in_training_range": round(metrics["in_range_rmse"], 4),
        "mae_in_training_range": round(metrics["in_range_mae"], 4),
        "run_id": run_id,
    }
    log.info("done", **summary, duration_s=round(log.elapsed(), 1))
    return summary
