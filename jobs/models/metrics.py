"""Accuracy metrics of predictions against actual durations, computed in Spark: overall, per group, per band, and
the coverage of prediction intervals. Training, the gate, scoring and monitoring share them."""

from __future__ import annotations

from jobs.models.inputs import PREDICTION, TARGET
from jobs.models.interval import P10, P90

HOUR_BANDS = [("night", 0, 6), ("morning_peak", 6, 10), ("midday", 10, 16), ("evening_peak", 16, 20), ("late", 20, 24)]


DISTANCE_BANDS = [("0-1mi", 0, 1), ("1-2mi", 1, 2), ("2-5mi", 2, 5), ("5-10mi", 5, 10), ("10mi_plus", 10, None)]


def metric_exprs(pred: str = PREDICTION, label: str = TARGET, where=None, prefix: str = "") -> list:
    """Aggregate expressions for RMSE, MAE, RMSLE (minutes), bias and n, optionally over the rows where ``where``.

    Plain aggregates, so they work in ``agg`` and in ``DataFrame.observe`` (computed during a write, no extra pass).
    """
    from pyspark.sql import functions as F

    def only(e):
        return e if where is None else F.when(where, e)

    err = F.col(pred) - F.col(label)
    log_err = F.log1p(F.greatest(F.col(pred), F.lit(0.0))) - F.log1p(F.col(label))
    return [
        F.sqrt(F.avg(only(err * err))).alias(f"{prefix}rmse"),
        F.avg(only(F.abs(err))).alias(f"{prefix}mae"),
        F.sqrt(F.avg(only(log_err * log_err))).alias(f"{prefix}rmsle"),
        F.avg(only(err)).alias(f"{prefix}bias"),
        F.count(only(F.lit(1))).alias(f"{prefix}n"),
    ]


def regression_metrics(df, pred: str = PREDICTION, label: str = TARGET, by: str | None = None) -> dict[str, float]:
    """RMSE, MAE, RMSLE (minutes) and bias, overall or per group of ``by``; computed in Spark."""
    return aggregate(df, metric_exprs(pred, label), by)


def aggregate(df, aggs: list, by: str | None = None) -> dict[str, float]:
    """Named aggregates over ``df``: {name: value}, or per group of ``by`` {name_<by>_<group>: value}."""
    if by is None:
        row = df.agg(*aggs).first().asDict()
        return {k: float(v) for k, v in row.items() if v is not None}
    out = {}
    for row in df.groupBy(by).agg(*aggs).collect():
        d = row.asDict()
        key = str(d.pop(by)).replace(" ", "_").replace("/", "_")
        out.update({f"{k}_{by}_{key}": float(v) for k, v in d.items() if v is not None})
    return out


def with_bands(df):
    """``hour_band`` from ``pickup_hour`` and, where ``trip_distance`` is present, ``distance_band`` (miles)."""
    from pyspark.sql import functions as F

    def banded(frame, column: str, bands, name: str):
        expr = F.lit(None).cast("string")
        for label, lo, hi in bands:
            inside = F.col(column) >= lo if hi is None else (F.col(column) >= lo) & (F.col(column) < hi)
            expr = F.when(inside, F.lit(label)).otherwise(expr)
        return frame.withColumn(name, expr)

    df = banded(df, "pickup_hour", HOUR_BANDS, "hour_band")
    return banded(df, "trip_distance", DISTANCE_BANDS, "distance_band") if "trip_distance" in df.columns else df


def with_slices(df, dims: list[str], key: str = "slice_key", value: str = "slice_value"):
    """Every row once for the whole population (``key`` and ``value`` null) and once per column of ``dims`` (``key``
    the column's name, ``value`` its value as a string): grouping by them aggregates every slice in one pass."""
    from pyspark.sql import functions as F

    keys = [F.struct(F.lit(None).cast("string").alias(key), F.lit(None).cast("string").alias(value))]
    keys += [F.struct(F.lit(d).alias(key), F.col(d).cast("string").alias(value)) for d in dims]
    return df.select("*", F.explode(F.array(*keys)).alias("_slice")).select("*", "_slice.*").drop("_slice")


def full_metrics(predictions) -> dict[str, float]:
    """Overall metrics plus RMSE/MAE per pickup borough, hour band and (with ``trip_distance``) distance band.

    One aggregation over the predictions: each row is counted once overall and once in each of its groups.
    """
    pred = with_bands(predictions)
    dims = [d for d in ("pu_borough", "hour_band", "distance_band") if d in pred.columns]
    rows = with_slices(pred, dims, "dim", "grp").groupBy("dim", "grp").agg(*metric_exprs()).collect()
    metrics: dict[str, float] = {}
    for row in rows:
        d = row.asDict()
        dim, grp = d.pop("dim"), d.pop("grp")
        if dim is None:
            metrics.update({k: float(v) for k, v in d.items() if v is not None})
            continue
        key = str(grp).replace(" ", "_").replace("/", "_")
        metrics.update(
            {f"{k}_{dim}_{key}": float(v) for k, v in d.items() if v is not None and k in ("rmse", "mae", "n")}
        )
    return metrics


def coverage_exprs(lower: str = P10, upper: str = P90, actual: str = TARGET, where=None) -> list:
    """Aggregate expressions: the share of rows whose actual duration lies inside [lower, upper] and the mean
    width, over the rows that have both (and ``where``, if given)."""
    from pyspark.sql import functions as F

    has_both = F.col(lower).isNotNull() & F.col(actual).isNotNull()
    counted = has_both if where is None else has_both & where
    inside = ((F.col(actual) >= F.col(lower)) & (F.col(actual) <= F.col(upper))).cast("double")
    return [
        F.avg(F.when(counted, inside)).alias("coverage"),
        F.avg(F.when(counted, F.col(upper) - F.col(lower))).alias("interval_width"),
    ]


def coverage_metrics(df, lower: str = P10, upper: str = P90, actual: str = TARGET, by: str | None = None):
    """Share of rows whose actual duration lies inside [lower, upper] and the mean width, overall or per group."""
    return aggregate(df, coverage_exprs(lower, upper, actual), by)
