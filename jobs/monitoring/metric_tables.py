"""Metric tables: what a dashboard charts across time and segments, as Delta tables a BI tool queries.

``monitoring/accuracy_metrics`` (``taxi.accuracy_metrics`` on the SQL endpoint): one row per service, window
(``window_type`` ``week`` with an ISO week such as ``2023-W06``, or ``month`` with ``2023-02``), slice
(``slice_key``, a column named in ``monitor.slices``, and ``slice_value``, its value; both null for the whole
population) and ``model_version`` (the version that scored the trips: a challenger in shadow has rows of its own).
Over the trips with a known duration in the modelled range: ``n``, ``rmse``, ``mae``, ``rmsle``, ``bias``, and the
prediction interval's ``coverage`` and mean ``interval_width`` (null for a version without intervals); ``trips``
counts every scored trip of the slice, known duration or not.

One aggregation pass per window type: each trip is counted once for the population and once in each of its slices
(exploded keys), grouped by window, slice and version; no loop over slices. Every monitor run rewrites the rows of
its week and of the months the week touches (scoring is monthly, so a month is whole once one of its weeks is
reported); ``taxi monitor --metrics`` fills every window already reported and rebuilds the service's page. A
window's rows are replaced, never appended: a rerun leaves the same table.
"""

from __future__ import annotations

from typing import Any

from jobs.models.inputs import PREDICTION
from jobs.models.metrics import coverage_exprs, metric_exprs, with_bands, with_slices
from jobs.monitoring import service_page
from jobs.monitoring.weeks import picked_up_in, scored_trips, week_key
from jobs.platform import lakehouse, sql
from jobs.platform.config import ConfigError, Settings
from jobs.platform.months import week_months

ACCURACY_COLUMNS = (
    "service",
    "window_type",
    "window",
    "slice_key",
    "slice_value",
    "model_version",
    "trips",
    "n",
    "rmse",
    "mae",
    "rmsle",
    "bias",
    "coverage",
    "interval_width",
)


def accuracy_metrics(scored, slices: list[str], service: str, window_type: str, window) -> Any:
    """Scored trips with their features -> ACCURACY_COLUMNS rows per (``window`` column, slice, model version)."""
    from pyspark.sql import functions as F

    banded = with_bands(scored)
    unknown = [c for c in slices if c not in banded.columns]
    if unknown:
        raise ConfigError(
            f"monitor.slices names {', '.join(unknown)}, not a column of the scored trips with their features "
            "(nor hour_band / distance_band)"
        )
    known = F.col("in_training_range") & F.col(PREDICTION).isNotNull()
    grouped = with_slices(banded, slices).groupBy(
        window.alias("window"), "slice_key", "slice_value", F.col("model_version").cast("int").alias("model_version")
    )
    rows = grouped.agg(F.count(F.lit(1)).alias("trips"), *metric_exprs(where=known), *coverage_exprs(where=known))
    return rows.select(F.lit(service).alias("service"), F.lit(window_type).alias("window_type"), *ACCURACY_COLUMNS[2:])


def scored(spark, settings: Settings, service: str, months: list[str], where=None):
    """The months' trips as every version scored them: the champion's and, where one ran, the shadow's."""
    tables = [lakehouse.PREDICTIONS]
    if lakehouse.exists(settings, lakehouse.SHADOW_PREDICTIONS):
        tables.append(lakehouse.SHADOW_PREDICTIONS)
    frames = [scored_trips(spark, settings, service, months, table, where) for table in tables]
    union = frames[0]
    for frame in frames[1:]:
        union = union.unionByName(frame)
    return union


def write(settings: Settings, rows, service: str, window_type: str, windows: list[str], run_id: str) -> int:
    """Replace the rows of ``windows`` with ``rows`` in one commit; the Delta version written."""
    from pyspark.sql import functions as F

    predicate = f"{sql.matches(service=service, window_type=window_type)} AND {sql.is_in('`window`', windows)}"
    stamped = rows.withColumn("run_id", F.lit(run_id)).withColumn("computed_at", F.current_timestamp())
    return lakehouse.replace_where(stamped, settings, lakehouse.ACCURACY_METRICS, run_id, predicate, merge_schema=True)


def refresh_week(spark, settings: Settings, service: str, week: str, run_id: str) -> dict[str, int]:
    """The week's rows and those of the months it touches (what a monitor run writes): {window_type: version}."""
    from pyspark.sql import functions as F

    months = week_months(week)
    slices = settings.monitor.slices
    in_week = scored(spark, settings, service, months, picked_up_in(week))
    weekly = accuracy_metrics(in_week, slices, service, "week", F.lit(week))
    monthly = accuracy_metrics(scored(spark, settings, service, months), slices, service, "month", F.col("month"))
    return {
        "week": write(settings, weekly, service, "week", [week], run_id),
        "month": write(settings, monthly, service, "month", months, run_id),
    }


def fill(spark, settings: Settings, service: str, run_id: str) -> dict[str, Any]:
    """Every window already reported (the weeks in ``monitoring/drift`` and their months), one pass per window
    type: what `taxi monitor --metrics` runs after an upgrade, or after changing ``monitor.slices``."""
    from pyspark.sql import functions as F

    weeks = []
    if lakehouse.exists(settings, lakehouse.DRIFT):
        drift = lakehouse.read(spark, settings, lakehouse.DRIFT).where(F.col("service") == service)
        weeks = sorted(r.week for r in drift.select("week").distinct().collect())
    if not weeks:
        return {"service": service, "weeks": [], "months": [], "message": "no reported week: nothing to fill"}
    months = sorted({m for w in weeks for m in week_months(w)})
    trips = scored(spark, settings, service, months).withColumn("_week", week_key())
    slices = settings.monitor.slices
    weekly = accuracy_metrics(trips.where(F.col("_week").isin(weeks)), slices, service, "week", F.col("_week"))
    monthly = accuracy_metrics(trips, slices, service, "month", F.col("month"))
    versions = {
        "week": write(settings, weekly, service, "week", weeks, run_id),
        "month": write(settings, monthly, service, "month", months, run_id),
    }
    page = service_page.publish(spark, settings, service)
    return {"service": service, "weeks": weeks, "months": months, "versions": versions, "service_page": str(page)}
