"""The bins a reference profile fixes for each monitored feature (quantiles for continuous features, the most
frequent values for categorical ones, then "other" and "missing"), and the counts per bin, in one Spark pass."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from jobs.models.inputs import PREDICTION

CONTINUOUS = [
    "trip_distance",
    "pickup_hour",
    "hour_of_week",
    "centroid_distance_km",
    "centroid_bearing_deg",
    "hist_median_duration_min",
    "hist_median_speed_mph",
    "hist_trip_count",
]


CATEGORICAL = [
    "PULocationID",
    "DOLocationID",
    "pu_borough_code",
    "do_borough_code",
    "pu_airport",
    "do_airport",
    "day_of_week",
    "is_holiday",
    "VendorID",
    "RatecodeID",
    "trip_type",
    "passenger_count",
    "hist_level",
]


MAX_CATEGORIES = 40


MISSING, OTHER = -1, -2


@dataclass
class BinSpec:
    feature: str
    kind: str  # continuous | categorical
    edges: list[float] | None = None  # continuous: inner edges (bins: (-inf,e0], (e0,e1], ..., (en,inf))
    categories: list[float] | None = None  # categorical: one bin each, then OTHER

    def labels(self) -> list[int]:
        n = len(self.edges) + 1 if self.kind == "continuous" else len(self.categories)
        return [*range(n), OTHER, MISSING] if self.kind == "categorical" else [*range(n), MISSING]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# Spark side: bins from the reference, counts for one side in one pass
# ---------------------------------------------------------------------------------------------------------------
def bin_specs(reference, bins: int) -> list[BinSpec]:
    """Quantile edges for the continuous features and the predictions, the ``MAX_CATEGORIES`` most frequent values
    of each categorical feature: two passes over ``reference`` in all."""
    from pyspark.sql import functions as F

    specs = []
    probs = [i / bins for i in range(1, bins)]
    quantiles = reference.approxQuantile([*CONTINUOUS, PREDICTION], probs, 0.001)
    for feature, qs in zip([*CONTINUOUS, PREDICTION], quantiles, strict=True):
        specs.append(BinSpec(feature, "continuous", edges=sorted(set(qs))))
    pairs = F.array(*[F.struct(F.lit(f).alias("f"), F.col(f).cast("double").alias("v")) for f in CATEGORICAL])
    rows = reference.select(F.explode(pairs).alias("p")).where("p.v IS NOT NULL").groupBy("p.f", "p.v").count()
    counts: dict[str, list[tuple[int, float]]] = {f: [] for f in CATEGORICAL}
    for r in rows.collect():
        counts[r["f"]].append((-r["count"], r["v"]))
    for feature in CATEGORICAL:
        top = sorted(counts[feature])[:MAX_CATEGORIES]  # most frequent first, ties by value
        specs.append(BinSpec(feature, "categorical", categories=sorted(v for _, v in top)))
    return specs


def _bin_expr(spec: BinSpec):
    from pyspark.sql import functions as F

    col = F.col(spec.feature).cast("double")
    expr = F.lit(MISSING)
    if spec.kind == "continuous":
        inner = F.lit(len(spec.edges))
        for i, edge in reversed(list(enumerate(spec.edges))):
            inner = F.when(col <= edge, F.lit(i)).otherwise(inner)
        return F.when(col.isNull() | F.isnan(col), expr).otherwise(inner)
    inner = F.lit(OTHER)
    for i, cat in enumerate(spec.categories):
        inner = F.when(col == cat, F.lit(i)).otherwise(inner)
    return F.when(col.isNull(), expr).otherwise(inner)


def bin_pairs(specs: list[BinSpec], columns: list[str] | None = None):
    """An array column of (f: feature, b: its bin) per spec: exploded, every row is counted once per feature.
    ``columns``: the bins already computed into these columns (see :func:`bin_columns`)."""
    from pyspark.sql import functions as F

    bins = [F.col(c) for c in columns] if columns else [_bin_expr(s) for s in specs]
    return F.array(*[F.struct(F.lit(s.feature).alias("f"), b.alias("b")) for s, b in zip(specs, bins, strict=True)])


def bin_columns(df, specs: list[BinSpec], prefix: str = "_bin_"):
    """``df`` with each spec's bin in a column of its own (computed once per row, before a row is multiplied)."""
    return df.select("*", *[_bin_expr(s).alias(f"{prefix}{i}") for i, s in enumerate(specs)]), [
        f"{prefix}{i}" for i in range(len(specs))
    ]


def binned_counts(df, specs: list[BinSpec]) -> dict[str, dict[int, int]]:
    """{feature: {bin: count}} for every spec, from one scan of ``df``."""
    from pyspark.sql import functions as F

    rows = df.select(F.explode(bin_pairs(specs)).alias("p")).groupBy("p.f", "p.b").count().collect()
    out: dict[str, dict[int, int]] = {s.feature: {} for s in specs}
    for r in rows:
        out[r["f"]][int(r["b"])] = int(r["count"])
    return out
