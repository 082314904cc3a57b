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
``p05``/``p50``/``p95`` (``percentile_approx``, rank error at most 1/1,000), for categories the exact
``distinct_count``.

One aggregation pass per table and window type: each trip is counted once for the population and once in each of
its slices (exploded keys), grouped by window, slice and version; no loop over slices. Every monitor run rewrites
the rows of its week, and of the months the week touches where a table lacks them for a version that scored the
month (scoring is monthly, so a month is whole once one of its weeks is reported; later weeks skip it).
``taxi monitor --metrics`` fills every window already reported and rebuilds the service's page. A window's rows are
replaced, never appended: a rerun leaves the same table.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jobs.models.binning import CATEGORICAL, CONTINUOUS
from jobs.models.inputs import PREDICTION, TARGET
from jobs.models.interval import P10, P90
from jobs.models.metrics import coverage_exprs, metric_exprs
from jobs.monitoring import drift_metrics, service_page
from jobs.monitoring.weeks import KEYS, picked_up_in, scored_trips, week_key, with_windows_and_slices
from jobs.platform import lakehouse, sql
from jobs.platform.config import Settings
from jobs.platform.months import add_months, add_weeks, week_months
from jobs.platform.tracking import setup_mlflow

ACCURACY_COLUMNS = (
    *KEYS,
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
PERCENTILE_ACCURACY = 1_000  # percentile_approx: rank error at most 1/1,000 of the rows
# The scored trips' columns the tables read besides the monitored features and the slices (hour and distance bands
# are made from pickup_hour and trip_distance).
READ = ("month", "pickup_datetime", "pickup_hour", "trip_distance", "model_version", "_champion", "in_training_range")
READ += (PREDICTION, P10, P90, TARGET)


def _grouped(scored, slices: list[str], windows: dict[str, Any]):
    """The trips exploded into their windows and slices (:func:`with_windows_and_slices`), grouped by window, slice
    and version."""
    from pyspark.sql import functions as F

    return with_windows_and_slices(scored, slices, windows).groupBy(
        *KEYS[1:5], F.col("model_version").cast("int").alias("model_version")
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
    """The months' trips as every version scored them: the champion's (``_champion`` true) and, where one ran, the
    shadow's."""
    from pyspark.sql import functions as F

    tables = [lakehouse.PREDICTIONS]
    if lakehouse.exists(settings, lakehouse.SHADOW_PREDICTIONS):
        tables.append(lakehouse.SHADOW_PREDICTIONS)
    frames = [
        scored_trips(spark, settings, service, months, table, where).withColumn(
            "_champion", F.lit(table is lakehouse.PREDICTIONS)
        )
        for table in tables
    ]
    union = frames[0]
    for frame in frames[1:]:
        union = union.unionByName(frame)
    # Only what the tables read: the trips are cached, and the features' bookkeeping and names would double them.
    wanted = {*READ, *CONTINUOUS, *CATEGORICAL, *settings.monitor.slices}
    return union.select(*[c for c in union.columns if c in wanted])


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


def write_windows(spark, settings: Settings, trips, service: str, targets: dict[str, list[str]], run_id: str):
    """Every metric table's rows of ``targets`` ({window_type: [window, ...]}) from ``trips`` (those windows' trips
    and the windows' before them, with ``_week``), one commit per table: {table: Delta version}."""
    from pyspark.sql import functions as F

    slices = settings.monitor.slices
    week = F.col("_week")
    # Drift compares each window with the one before it; the other tables count the target windows only.
    month = F.col("month")
    around = {
        "week": F.when(week.isin([*targets["week"], *[add_weeks(w, -1) for w in targets["week"]]]), week),
        "month": F.when(month.isin([*targets["month"], *[add_months(m, -1) for m in targets["month"]]]), month),
    }
    exact = {t: F.when(column.isin(targets[t]), column) for t, column in around.items()}
    trips = trips.cache()  # each table's aggregation reads it once
    rows = {table: lambda compute=compute: compute(trips, slices, service, exact) for table, compute in TABLES}
    rows[lakehouse.DRIFT_METRICS] = lambda: drift_metrics.rows(spark, settings, service, trips, around, targets)
    try:
        # The tables at once, each from its own thread: a write spends about as long in Delta's commit and log reads
        # (the driver, waiting) as in its aggregation (the cores), so one table's commit overlaps another's work.
        with ThreadPoolExecutor(len(rows), thread_name_prefix="metric-tables") as pool:
            futures = {
                table.key: pool.submit(lambda t=table, r=compute: write(settings, t, r(), service, targets, run_id))
                for table, compute in rows.items()
            }
            return {key: future.result() for key, future in futures.items()}
    finally:
        trips.unpersist()


def months_with_previous(weeks: list[str]) -> tuple[list[str], list[str]]:
    """(the weeks' months, those months plus the months of the weeks before and the months before: what drift's
    baselines read)."""
    months = sorted({m for w in weeks for m in week_months(w)})
    before = {m for w in weeks for m in week_months(add_weeks(w, -1))} | {add_months(m, -1) for m in months}
    return months, sorted(set(months) | before)


def refresh_week(spark, settings: Settings, service: str, week: str, run_id: str) -> dict[str, int]:
    """A monitor run's share: the week's rows, and those of the months it touches that the tables do not hold yet
    for every version that scored them. Scoring is monthly, so a month's rows are whole from its first reported week
    on; the month's later weeks read only themselves and the week before (drift's baseline)."""
    before = add_weeks(week, -1)
    recent = sorted(set(week_months(week)) | set(week_months(before)))
    # Cached here: which versions scored the week is asked of the trips the tables then aggregate.
    trips = scored(spark, settings, service, recent, picked_up_in(week) | picked_up_in(before))
    trips = trips.withColumn("_week", week_key()).cache()  # write_windows unpersists it
    months = pending_months(spark, settings, service, trips.where(picked_up_in(week)))
    if months:  # the whole months, and the months before them (drift's baseline)
        trips.unpersist()
        read = sorted({*recent, *months, *(add_months(m, -1) for m in months)})
        trips = scored(spark, settings, service, read).withColumn("_week", week_key())
    return write_windows(spark, settings, trips, service, {"week": [week], "month": months}, run_id)


def pending_months(spark, settings: Settings, service: str, week_trips) -> list[str]:
    """The months of the week's trips whose rows some metric table lacks for a version that scored them (a month
    scored again by a new champion, or a shadow added since, is written again)."""
    from pyspark.sql import functions as F

    version = F.col("model_version").cast("int")
    scored_by = {
        r.month: set(r.versions)
        for r in week_trips.groupBy("month").agg(F.collect_set(version).alias("versions")).collect()
    }
    tables = [*(table for table, _ in TABLES), lakehouse.DRIFT_METRICS]
    if not scored_by or not all(lakehouse.exists(settings, t) for t in tables):
        return sorted(scored_by)
    # Which month rows the tables hold, read through delta-rs (no Spark job: a few dozen rows per table).
    filters = [("service", "=", service), ("window_type", "=", "month"), ("window", "in", sorted(scored_by))]
    held: dict[tuple[str, int], set[str]] = {}
    for t in tables:
        for r in lakehouse.query(settings, t, ["window", "model_version"], filters).itertuples():
            held.setdefault((r.window, int(r.model_version)), set()).add(t.key)
    complete = {key for key, where in held.items() if len(where) == len(tables)}
    return sorted(m for m, versions in scored_by.items() if any((m, v) not in complete for v in versions))


def fill(spark, settings: Settings, service: str, run_id: str) -> dict[str, Any]:
    """Every window already reported (the weeks in ``monitoring/drift`` and their months), one pass per table: what
    `taxi monitor --metrics` runs after an upgrade, or after changing ``monitor.slices``."""
    from pyspark.sql import functions as F

    setup_mlflow(settings)  # drift's baselines are the versions' reference profiles, in the registry
    weeks = []
    if lakehouse.exists(settings, lakehouse.DRIFT):
        drift = lakehouse.read(spark, settings, lakehouse.DRIFT).where(F.col("service") == service)
        weeks = sorted(r.week for r in drift.select("week").distinct().collect())
    if not weeks:
        return {"service": service, "weeks": [], "months": [], "message": "no reported week: nothing to fill"}
    months, read = months_with_previous(weeks)
    trips = scored(spark, settings, service, read).withColumn("_week", week_key())
    versions = write_windows(spark, settings, trips, service, {"week": weeks, "month": months}, run_id)
    page = service_page.publish(spark, settings, service)
    return {"service": service, "weeks": weeks, "months": months, "versions": versions, "service_page": str(page)}
