"""Features: one row per validated trip of a month in ``silver/features``, known at pickup time only.

Nothing written after the trip ends (fare, tip, tolls, total, dropoff time) is a feature. ``trip_distance`` is
the stand-in for the planned route distance a dispatcher or routing engine knows before the trip starts (the
TLC only publishes the metered distance). History features come from EARLIER months only: a month never reads
its own or later months' trips, so retraining on a month cannot leak its targets into its features.

The target (``duration_min``) and the training-range flag are stored with the features; the training filter
is applied by the training job only, so scoring covers every validated trip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jobs.features import freshness
from jobs.features.transforms import OUTPUT_COLUMNS, add_history_features, trip_features
from jobs.platform import lakehouse
from jobs.platform.config import Settings
from jobs.platform.context import RunContext
from jobs.platform.log import spark_progress
from jobs.platform.months import check_month, history_window, previous_months

FEATURE_SET_VERSION = "2"  # 2: history from the latest months present, not only the calendar months before


# ---------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------
def zone_table(spark, settings: Settings):
    """Zone lookup joined with centroids: LocationID, borough, zone, service_zone, lon, lat."""
    from pyspark.sql import functions as F

    lookup = spark.read.option("header", True).csv(str(settings.data.zone_lookup))
    centroids = spark.read.option("header", True).csv(str(settings.data.zone_centroids))
    return lookup.select(
        F.col("LocationID").cast("int").alias("LocationID"),
        F.col("Borough").alias("borough"),
        F.col("Zone").alias("zone"),
        F.col("service_zone"),
    ).join(
        centroids.select(
            F.col("LocationID").cast("int").alias("LocationID"),
            F.col("lon").cast("double"),
            F.col("lat").cast("double"),
        ),
        "LocationID",
        "left",
    )


def us_federal_holidays(years: list[int]) -> list[str]:
    """US federal holidays (with their observed dates) for ``years``, computed by `holidays`: nothing downloaded."""
    import holidays

    return sorted(d.isoformat() for d in holidays.US(years=years))


# ---------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------
def run(spark, settings: Settings, service: str, month: str) -> dict[str, Any]:
    check_month(month)
    ctx = RunContext.start("features", spark, settings, service, month)
    inputs = read_inputs(ctx)
    ctx.log.info("history window", lookback=inputs.lookback, months=",".join(inputs.history_months) or "none")
    version = write_features(ctx, build_features(ctx, inputs))
    rows = (
        lakehouse.read(spark, settings, lakehouse.FEATURES, version)
        .where(lakehouse.partition_predicate(service, month))
        .count()
    )
    summary = {
        "rows": rows,
        "features_version": version,
        "trips_version_read": inputs.trips_version,
        "history_months": inputs.history_months,
        "run_id": ctx.run_id,
    }
    ctx.log.info(
        "done", **{k: v for k, v in summary.items() if k != "history_months"}, duration_s=round(ctx.log.elapsed(), 1)
    )
    return summary


@dataclass(frozen=True)
class Inputs:
    """The month's validated trips and its history: the trips of the latest months present in the lookback, at one
    version of silver/trips, and the validation run behind each month read (what freshness checks later)."""

    trips: Any
    past: Any
    trips_version: int | None
    validation_runs: dict[str, str]  # month -> validation run id, the month itself included
    lookback: str

    @property
    def history_months(self) -> list[str]:
        return sorted(m for m in self.validation_runs if m != max(self.validation_runs))


def read_inputs(ctx: RunContext) -> Inputs:
    from pyspark.sql import functions as F

    spark, settings, service, month, cfg = ctx.spark, ctx.settings, ctx.service, ctx.period, ctx.settings.features
    exists = lakehouse.exists(settings, lakehouse.TRIPS)
    trips_version = lakehouse.current_version(spark, settings, lakehouse.TRIPS) if exists else None
    trips = lakehouse.read_partition(spark, settings, lakehouse.TRIPS, service, month, "taxi validate")
    service_trips = lakehouse.read(spark, settings, lakehouse.TRIPS, version=trips_version).where(
        F.col("service") == service
    )
    lookback = previous_months(month, cfg.history_lookback_months)
    # The validated months present in the lookback, by the run that wrote each (freshness: a later re-validation
    # makes the features that read it stale).
    present = service_trips.where(F.col("month").isin(lookback)).select("month", "validation_run_id").distinct()
    runs = {r.month: r.validation_run_id for r in present.collect()}
    window = history_window(month, list(runs), cfg.history_months, cfg.history_lookback_months)
    inputs = {m: runs[m] for m in window}
    inputs[month] = trips.select("validation_run_id").first().validation_run_id
    past = service_trips.where(F.col("month").isin(window))
    return Inputs(trips, past, trips_version, inputs, f"{lookback[0]}..{lookback[-1]}")


def build_features(ctx: RunContext, inputs: Inputs):
    """The month's feature rows: its trips' own features, history statistics from the earlier months' trips."""
    from pyspark.sql import functions as F

    cfg, month = ctx.settings.features, ctx.period
    year = int(month[:4])
    holidays = us_federal_holidays([year - 1, year, year + 1])
    zones = zone_table(ctx.spark, ctx.settings)
    past = trip_features(inputs.past, zones, holidays, cfg.target_min_minutes, cfg.target_max_minutes)
    own = trip_features(inputs.trips, zones, holidays, cfg.target_min_minutes, cfg.target_max_minutes)
    return (
        own.transform(lambda d: add_history_features(d, past.where("in_training_range"), cfg.min_history_trips))
        .withColumn("feature_set_version", F.lit(FEATURE_SET_VERSION))
        .withColumn("features_run_id", F.lit(ctx.run_id))
        .withColumn(freshness.COLUMN, F.lit(freshness.inputs_record(inputs.validation_runs)))
        .select(*OUTPUT_COLUMNS)
    )


def write_features(ctx: RunContext, features) -> int:
    with spark_progress(ctx.spark, ctx.log):
        # merge_schema: a table written before the inputs column existed gains it
        return lakehouse.replace_partition(
            features, ctx.settings, lakehouse.FEATURES, ctx.run_id, ctx.service, ctx.period, merge_schema=True
        )
