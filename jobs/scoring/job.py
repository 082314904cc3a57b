"""Score: predict every validated trip of a month with a registered model into ``gold/predictions``, and with
the challenger in shadow (``taxi shadow``), when there is one, into ``gold/shadow_predictions``.

The model comes from the MLflow registry by alias (default ``champion``) or version, never from a local path.
Prediction runs in Arrow batches with the booster's in-place predict (see :mod:`jobs.models.prediction`). Rescoring a
month replaces its partition in one Delta commit; every row names the model version and the feature table
version it came from, so BI users can always tell which model produced a number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jobs.models import compiled, registry
from jobs.models.inputs import PREDICTION, TARGET
from jobs.models.interval import P10, P90, load_interval
from jobs.models.metrics import metric_exprs
from jobs.models.prediction import predict_minutes
from jobs.models.registry import load_registered
from jobs.platform import lakehouse
from jobs.platform.config import Settings
from jobs.platform.context import RunContext
from jobs.platform.errors import MissingUpstream
from jobs.platform.log import spark_progress
from jobs.platform.months import check_month
from jobs.platform.tracking import setup_mlflow

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


def to_output(
    predictions, service: str, month: str, model_name: str, model_version: int, features_version: int, run_id: str
):
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
        *[
            F.round(c, 3).alias(c) if c in predictions.columns else F.lit(None).cast("double").alias(c)
            for c in (P10, P90)
        ],
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


@dataclass(frozen=True)
class Scorer:
    """A registered version to score with: the model, its ModelVersion and the alias it was asked for by."""

    model: Any
    version: Any
    alias: str | None


def run(
    spark,
    settings: Settings,
    service: str,
    month: str,
    alias: str | None = None,
    version: int | None = None,
    skip_if_no_model: bool = False,
) -> dict[str, Any]:
    check_month(month)
    ctx = RunContext.start("score", spark, settings, service, month)
    setup_mlflow(settings)
    alias = None if version else (alias or settings.score.model_alias)
    try:
        scorer = Scorer(*load_registered(settings, service, alias=alias, version=version), alias)
    except MissingUpstream as e:
        if not skip_if_no_model:
            raise
        ctx.log.warning("skipped: no model to score with", reason=str(e))
        return {"skipped": True, "reason": str(e)}
    feats, features_version = month_features(ctx)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(settings.score.batch_size))
    summary = write_scores(ctx, lakehouse.PREDICTIONS, feats, features_version, scorer)
    # Scoring with the default alias (what the DAGs do) also scores the challenger; an explicit version does not.
    challenger = registry.challenger(settings, service) if alias == settings.score.model_alias else None
    if challenger is not None and challenger.version != scorer.version.version:
        # In shadow: the same trips, after the champion's partition is written (BI never waits for it).
        shadow_model, _ = load_registered(settings, service, version=int(challenger.version))
        summary["shadow"] = write_scores(
            ctx,
            lakehouse.SHADOW_PREDICTIONS,
            feats,
            features_version,
            Scorer(shadow_model, challenger, registry.CHALLENGER),
        )
    ctx.log.info(
        "done",
        **{k: v for k, v in summary.items() if k not in ("shadow", "predicts_with")},
        shadow_version=summary.get("shadow", {}).get("model_version", "none"),
        duration_s=round(ctx.log.elapsed(), 1),
    )
    return summary


def month_features(ctx: RunContext):
    """(the month's feature rows at one table version, that version); no features is an error naming the job."""
    spark, settings = ctx.spark, ctx.settings
    exists = lakehouse.exists(settings, lakehouse.FEATURES)
    features_version = lakehouse.current_version(spark, settings, lakehouse.FEATURES) if exists else None
    lakehouse.read_partition(spark, settings, lakehouse.FEATURES, ctx.service, ctx.period, "taxi features")
    feats = lakehouse.read(spark, settings, lakehouse.FEATURES, features_version).where(
        lakehouse.partition_predicate(ctx.service, ctx.period)
    )
    return feats, features_version


def write_scores(ctx: RunContext, table, feats, features_version: int | None, scorer: Scorer) -> dict[str, Any]:
    """Score ``feats`` with one registered version into the month's partition of ``table``; its summary."""
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    model, mv, service, month = scorer.model, scorer.version, ctx.service, ctx.period
    # A version trained with intervals points at its calibrated quantile models; an older one scores without.
    interval = load_interval(mv.tags["interval_uri"]) if mv.tags.get("interval_uri") else None
    predicts_with = "boosters (score.compiled_trees is off)"
    if ctx.settings.score.compiled_trees:
        predicts_with = compiled.attach(mv, model, interval)
    ctx.log.info(
        "model",
        name=mv.name,
        version=mv.version,
        flavor=model.flavor,
        alias=scorer.alias or "-",
        table=table.relpath,
        features_version=features_version,
        interval=f"{interval.coverage:.0%}" if interval else "none",
        predicts_with=predicts_with,
    )
    run_id = lakehouse.new_run_id("score")
    predictions = predict_minutes(feats, model, KEEP, interval=interval)
    out = to_output(predictions, service, month, mv.name, mv.version, features_version, run_id)
    # Metrics are observed while the partition is written: no second pass over the predictions.
    observed = Observation(f"score-{run_id}")
    in_range = F.col("in_training_range")
    inside = F.col("actual_duration_min").between(F.col(P10), F.col(P90)).cast("double")
    out = out.observe(
        observed,
        *metric_exprs(PREDICTION, "actual_duration_min"),
        *metric_exprs(PREDICTION, "actual_duration_min", where=in_range, prefix="in_range_"),
        F.avg(F.when(in_range, inside)).alias("in_range_coverage"),
        F.avg(F.when(in_range, F.col(P90) - F.col(P10))).alias("in_range_interval_width"),
    )
    with spark_progress(ctx.spark, ctx.log):  # merge_schema: tables scored before intervals existed gain columns
        written = lakehouse.replace_partition(out, ctx.settings, table, run_id, service, month, merge_schema=True)
    metrics = {k: (float("nan") if v is None else float(v)) for k, v in observed.get.items()}
    return {
        "rows": int(metrics["n"]),
        "model_name": mv.name,
        "model_version": int(mv.version),
        "features_version": features_version,
        "predictions_version": written,
        "rmse_in_training_range": round(metrics["in_range_rmse"], 4),
        "mae_in_training_range": round(metrics["in_range_mae"], 4),
        "interval_coverage_in_training_range": _rounded(metrics["in_range_coverage"]),
        "interval_width_in_training_range": _rounded(metrics["in_range_interval_width"]),
        "predicts_with": predicts_with,
        "run_id": run_id,
    }


def _rounded(value: float) -> float | None:
    """4 decimals; None where nothing was measured (no interval, or no known duration)."""
    return None if value != value else round(value, 4)
