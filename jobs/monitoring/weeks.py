"""What the monitor reads for a week: its scored trips with their features, the verdicts of the weeks before it,
and which complete ISO weeks of the scored months still have no report."""

from __future__ import annotations

import datetime as dt
from typing import Any

from jobs.models.inputs import PREDICTION
from jobs.models.interval import P10, P90
from jobs.models.metrics import with_bands, with_slices
from jobs.platform import lakehouse, sql
from jobs.platform.config import ConfigError, Settings
from jobs.platform.errors import MissingUpstream
from jobs.platform.months import add_weeks, month_start, wall_clock, week_bounds, week_months


def week_key(column: str = "pickup_datetime"):
    """The ISO week (YYYY-Www) of a wall-clock timestamp column, as the monitor names weeks."""
    from pyspark.sql import functions as F

    day = F.to_date(column)
    iso_weekday = (F.dayofweek(day) + 5) % 7 + 1  # Monday 1 .. Sunday 7
    thursday = F.date_add(day, 4 - iso_weekday)  # the ISO year is the year of the week's Thursday
    return F.format_string("%d-W%02d", F.year(thursday), F.weekofyear(day))


def scored_week(spark, settings: Settings, service: str, week: str, table=lakehouse.PREDICTIONS):
    """The week's trips scored into ``table`` with their features (only the week's month partitions are read)."""
    return scored_trips(spark, settings, service, week_months(week), table, picked_up_in(week))


def picked_up_in(week: str):
    """The condition: a trip's wall-clock pickup lies in the ISO week (Monday 00:00 to the next Monday)."""
    from pyspark.sql import functions as F

    start, end = week_bounds(week)
    return (F.col("pickup_datetime") >= wall_clock(start)) & (F.col("pickup_datetime") < wall_clock(end))


def scored_trips(spark, settings: Settings, service: str, months: list[str], table=lakehouse.PREDICTIONS, where=None):
    """The months' trips scored into ``table`` (those matching ``where``, a condition on ``pickup_datetime``, which
    both tables carry) joined with their features; only those months' partitions are read."""
    from pyspark.sql import functions as F

    if not lakehouse.exists(settings, table):
        raise MissingUpstream(f"{table.relpath} is empty: run `taxi score --service {service}` for {months} first")
    scored = (
        lakehouse.read(spark, settings, table).where(F.col("service") == service).where(F.col("month").isin(months))
    )
    # Intervals: null for trips scored before the model had them (an older table lacks the columns altogether).
    bounds = [F.col(c) if c in scored.columns else F.lit(None).cast("double").alias(c) for c in (P10, P90)]
    preds = scored.select("trip_id", "pickup_datetime", PREDICTION, *bounds, "model_version")
    feats = lakehouse.read(spark, settings, lakehouse.FEATURES).where(F.col("service") == service)
    feats = feats.where(F.col("month").isin(months))
    if where is not None:  # on both sides: the join then shuffles the chosen trips only, not their whole months
        preds, feats = preds.where(where), feats.where(where)
    return feats.join(preds.drop("pickup_datetime"), "trip_id")


def earlier_verdicts(spark, settings: Settings, service: str, week: str) -> list[str]:
    """Verdicts of the ``drift_window - 1`` weeks before ``week``, oldest first ("none" where no report)."""
    weeks = [add_weeks(week, -k) for k in range(settings.monitor.drift_window - 1, 0, -1)]
    if not weeks or not lakehouse.exists(settings, lakehouse.DRIFT):
        return ["none"] * len(weeks)
    rows = (
        lakehouse.read(spark, settings, lakehouse.DRIFT)
        .where(sql.matches(service=service))
        .where(sql.is_in("week", weeks))
        .select("week", "verdict")
        .distinct()
        .collect()
    )
    found = {r.week: r.verdict for r in rows}
    return [found.get(w, "none") for w in weeks]


def complete_weeks(months: list[str]) -> list[str]:
    """ISO weeks all of whose days lie in ``months`` (a week spanning two months needs both), oldest first."""
    have = set(months)
    weeks = set()
    for month in have:
        day = month_start(month)
        while day.strftime("%Y-%m") == month:
            year, number, _ = day.isocalendar()
            week = f"{year}-W{number:02d}"
            if set(week_months(week)) <= have:
                weeks.add(week)
            day += dt.timedelta(days=1)
    return sorted(weeks)


def pending_weeks(spark, settings: Settings, service: str) -> list[str]:
    """Complete ISO weeks of the scored months that have no report yet."""
    if not lakehouse.exists(settings, lakehouse.PREDICTIONS):
        return []
    scored = [
        r.month
        for r in lakehouse.read(spark, settings, lakehouse.PREDICTIONS)
        .where(lakehouse.partition_predicate(service))
        .select("month")
        .distinct()
        .collect()
    ]
    done = set()
    if lakehouse.exists(settings, lakehouse.DRIFT):
        done = {
            r.week
            for r in lakehouse.read(spark, settings, lakehouse.DRIFT)
            .where(sql.matches(service=service))
            .select("week")
            .distinct()
            .collect()
        }
    return [w for w in complete_weeks(scored) if w not in done]


# The keys of every metric table's row (jobs.monitoring.metric_tables, drift_metrics).
KEYS = ("service", "window_type", "window", "slice_key", "slice_value", "model_version")


def with_windows_and_slices(scored, slices: list[str], windows: dict[str, Any]):
    """The trips exploded into their windows ({window_type: column}, null where a trip is in none) and then into
    the population and each slice (``slice_key``/``slice_value``): grouping by them aggregates all in one pass."""
    return with_slices(with_windows(scored, slices, windows), slices)


def with_windows(scored, slices: list[str], windows: dict[str, Any]):
    """The trips exploded into their windows (``window_type``, ``window``), with the slices' columns (the bands
    added); a slice that names no column is a configuration error."""
    from pyspark.sql import functions as F

    banded = with_bands(scored)
    unknown = [c for c in slices if c not in banded.columns]
    if unknown:
        raise ConfigError(
            f"monitor.slices names {', '.join(unknown)}, not a column of the scored trips with their features "
            "(nor hour_band / distance_band)"
        )
    pairs = F.array(*[F.struct(F.lit(t).alias("window_type"), c.alias("window")) for t, c in windows.items()])
    return (
        banded.select("*", F.explode(pairs).alias("_window"))
        .select("*", "_window.window_type", "_window.window")
        .drop("_window")
        .where(F.col("window").isNotNull())
    )
