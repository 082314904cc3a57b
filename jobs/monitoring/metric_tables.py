"""Metric tables: what a dashboard charts across time and segments, as Delta tables a BI tool queries.

``monitoring/accuracy_metrics`` (``taxi.accuracy_metrics`` on the SQL endpoint): one row per service, window
(``window_type`` ``week`` with an ISO week such as ``2023-W06``, or ``month`` with ``2023-02``), slice
(``slice_key``, a column named in ``monitor.slices``, and ``slice_value``, its value; both null for the whole
population) and ``model_version`` (the version that scored the trips: a challenger in shadow has rows of its own).
Over the trips with a known duration in the modelled range: ``n``, ``rmse``, ``mae``, ``rmsle``, ``bias``, and the
prediction interval's ``coverage`` and mean ``interval_width`` (null for a version without intervals); ``trips``
counts every scored trip of the slice, known duration or not.

``monitoring/profile_metrics`` (``taxi.profile_metrics``): the same keys plus ``column``, one row per monitored
feature, the prediction and the actual duration: ``count`` (non-null), ``null_share``, and for numbers ``mean`` and
``p05``/``p50``/``p95`` (``percentile_approx``, rank error at most 1/10,000), for categories the exact
``distinct_count``.

One aggregation pass per table and window type: each trip is counted once for the population and once in each of
its slices (exploded keys), grouped by window, slice and version; no loop over slices. Every monitor run rewrites
the rows of its week and of the months the week touches (scoring is monthly, so a month is whole once one of its
weeks is reported); ``taxi monitor --metrics`` fills every window already reported and rebuilds the service's page.
A window's rows are replaced, never appended: a rerun leaves the same table.
"""

from __future__ import annotations

from typing import Any

from jobs.models.binning import CATEGORICAL, CONTINUOUS
from jobs.models.inputs import PREDICTION, TARGET
from jobs.models.metrics import coverage_exprs, metric_exprs, with_bands, with_slices
from jobs.monitoring import service_page
from jobs.monitoring.weeks import scored_trips, week_key
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


PROFILE_COLUMNS = (
    *ACCURACY_COLUMNS[:6],
    "column",
    "count",
    "null_share",
    "mean",
    "p05",
    "p50",
    "p95",
    "distinct_count",
)
# Profiled: every monitored feature, the prediction and the actual duration; categories get a distinct count,
# numbers a mean and quantiles.
NUMERIC = (*CONTINUOUS, PREDICTION, TARGET)
PERCENTILE_ACCURACY = 10_000  # percentile_approx: rank error at most 1/10,000 of the rows


def _grouped(scored, slices: list[str], windows: dict[str, Any]):
    """The trips exploded into their windows ({window_type: column}, null where a trip is in none) and then into
    the population and each slice, grouped by window, slice and version."""
    from pyspark.sql import functions as F

    banded = with_bands(scored)
    unknown = [c for c in slices if c not in banded.columns]
    if unknown:
        raise ConfigError(
            f"monitor.slices names {', '.join(unknown)}, not a column of the scored trips with their features "
            "(nor hour_band / distance_band)"
        )
    pairs = F.array(*[F.struct(F.lit(t).alias("window_type"), c.alias("window")) for t, c in windows.items()])
    windowed = (
        banded.select("*", F.explode(pairs).alias("_window"))
        .select("*", "_window.window_type", "_window.window")
        .drop("_window")
        .where(F.col("window").isNotNull())
    )
    return with_slices(windowed, slices).groupBy(
        "window_type", "window", "slice_key", "slice_value", F.col("model_version").cast("int").alias("model_version")
    )


def accuracy_metrics(scored, slices: list[str], service: str, windows: dict[str, Any]) -> Any:
    """Scored trips with their features -> ACCURACY_COLUMNS rows per (window, slice, model version)."""
    from pyspark.sql import functions as F

    known = F.col("in_training_range") & F.col(PREDICTION).isNotNull()
    rows = _grouped(scored, slices, windows).agg(
        F.count(F.lit(1)).alias("trips"), *metric_exprs(where=known), *coverage_exprs(where=known)
    )
    return rows.select(F.lit(service).alias("service"), *ACCURACY_COLUMNS[1:])


def profile_metrics(scored, slices: list[str], service: str, windows: dict[str, Any]) -> Any:
    """Scored trips with their features -> PROFILE_COLUMNS rows, one per (window, slice, version, column): one
    aggregation computes every column's statistics, then the columns are unpivoted into rows."""
    from pyspark.sql import functions as F

    def stats(column: str):
        x = F.col(column).cast("double")
        numeric = column in NUMERIC
        quantiles = F.percentile_approx(x, [0.05, 0.5, 0.95], PERCENTILE_ACCURACY) if numeric else None
        none = F.lit(None).cast("double")
        return F.struct(
            F.count(x).alias("count"),
            (1 - F.count(x) / F.count(F.lit(1))).alias("null_share"),
            (F.avg(x) if numeric else none).alias("mean"),
            *[(quantiles[i] if numeric else none).alias(name) for i, name in enumerate(("p05", "p50", "p95"))],
            # Categories are codes of a few hundred values at most: an exact set is cheaper than a 1% HyperLogLog.
            (F.lit(None).cast("long") if numeric else F.size(F.collect_set(x)).cast("long")).alias("distinct_count"),
        ).alias(column)

    columns = [*NUMERIC, *CATEGORICAL]
    wide = _grouped(scored, slices, windows).agg(*[stats(c) for c in columns])
    ids = ["window_type", "window", "slice_key", "slice_value", "model_version"]
    long = wide.unpivot(ids, columns, "column", "stats").select(*ids, "column", "stats.*")
    return long.select(F.lit(service).alias("service"), *PROFILE_COLUMNS[1:])


# The metric tables, each with the function that computes its rows.
TABLES = ((lakehouse.ACCURACY_METRICS, accuracy_metrics), (lakehouse.PROFILE_METRICS, profile_metrics))


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


def write(settings: Settings, table, rows, service: str, windows: dict[str, list[str]], run_id: str) -> int:
    """Replace the rows of ``windows`` ({window_type: [window, ...]}) in ``table`` with ``rows`` in one commit; the
    Delta version written."""
    from pyspark.sql import functions as F

    chosen = " OR ".join(
        f"({sql.matches(window_type=t)} AND {sql.is_in('`window`', names)})" for t, names in windows.items()
    )
    stamped = rows.withColumn("run_id", F.lit(run_id)).withColumn("computed_at", F.current_timestamp())
    predicate = f"{sql.matches(service=service)} AND ({chosen})"
    return lakehouse.replace_where(stamped, settings, table, run_id, predicate, merge_schema=True)


def write_windows(settings: Settings, trips, service: str, windows: dict[str, tuple], run_id: str) -> dict[str, int]:
    """Every metric table's rows of ``windows`` ({window_type: (window column, [windows])}) from ``trips`` (cached:
    each table's aggregation reads it once), one commit per table: {table: Delta version}."""
    trips = trips.cache()
    columns = {t: column for t, (column, _) in windows.items()}
    names = {t: listed for t, (_, listed) in windows.items()}
    try:
        return {
            table.key: write(
                settings, table, compute(trips, settings.monitor.slices, service, columns), service, names, run_id
            )
            for table, compute in TABLES
        }
    finally:
        trips.unpersist()


def refresh_week(spark, settings: Settings, service: str, week: str, run_id: str) -> dict[str, int]:
    """The week's rows and those of the months it touches (what a monitor run writes)."""
    from pyspark.sql import functions as F

    months = week_months(week)
    trips = scored(spark, settings, service, months).withColumn("_week", week_key())
    in_week = F.when(F.col("_week") == week, F.col("_week"))  # the month's other trips count for the month only
    windows = {"week": (in_week, [week]), "month": (F.col("month"), months)}
    return write_windows(settings, trips, service, windows, run_id)


def fill(spark, settings: Settings, service: str, run_id: str) -> dict[str, Any]:
    """Every window already reported (the weeks in ``monitoring/drift`` and their months), one pass per table: what
    `taxi monitor --metrics` runs after an upgrade, or after changing ``monitor.slices``."""
    from pyspark.sql import functions as F

    weeks = []
    if lakehouse.exists(settings, lakehouse.DRIFT):
        drift = lakehouse.read(spark, settings, lakehouse.DRIFT).where(F.col("service") == service)
        weeks = sorted(r.week for r in drift.select("week").distinct().collect())
    if not weeks:
        return {"service": service, "weeks": [], "months": [], "message": "no reported week: nothing to fill"}
    months = sorted({m for w in weeks for m in week_months(w)})
    trips = scored(spark, settings, service, months).withColumn("_week", week_key())
    reported = F.when(F.col("_week").isin(weeks), F.col("_week"))
    windows = {"week": (reported, weeks), "month": (F.col("month"), months)}
    versions = write_windows(settings, trips, service, windows, run_id)
    page = service_page.publish(spark, settings, service)
    return {"service": service, "weeks": weeks, "months": months, "versions": versions, "service_page": str(page)}
