"""The reference profile a model version carries: the bins and counts of every monitored feature and of the
predictions, samples of the continuous ones and the accuracy, all computed on the validation month predicted by
the pre-refit model (data that model never trained on). Stored as a JSON artifact of the training run when the
version is registered; the weekly monitor reads it instead of re-predicting any training data.
"""

from __future__ import annotations

import math
from typing import Any

from jobs.models.binning import CATEGORICAL, CONTINUOUS, BinSpec, bin_columns, bin_pairs, bin_specs, binned_counts
from jobs.models.inputs import PREDICTION, TARGET
from jobs.models.interval import P10
from jobs.models.metrics import coverage_metrics, regression_metrics, with_bands, with_slices

PROFILE_COLUMNS = [*CONTINUOUS, *CATEGORICAL, TARGET, "pu_borough", "in_training_range"]
SAMPLE_ROWS = 5000  # per continuous feature, for KS and Wasserstein
ARTIFACT = "reference_profile.json"


def accuracy(df) -> dict[str, float]:
    """RMSE, MAE, RMSLE, bias and n over the rows with a duration in the modelled range, plus RMSE by borough;
    where the rows carry prediction intervals, their coverage and mean width, overall and by borough."""
    known = df.where("in_training_range")
    perf = regression_metrics(known)
    perf.update({k: v for k, v in regression_metrics(known, by="pu_borough").items() if k.startswith("rmse_")})
    if P10 in df.columns:
        perf.update(coverage_metrics(known))
        perf.update(coverage_metrics(known, by="pu_borough"))
    return perf


def continuous_sample(df, rows: int, seed: int = 1) -> dict[str, list[float | None]]:
    """Up to ``rows`` values of each continuous feature and of the predictions (a seeded Spark sample)."""
    total = df.count()
    cols = [*CONTINUOUS, PREDICTION]
    pdf = df.select(*cols).sample(min(1.0, rows / max(1, total)), seed=seed).limit(rows).toPandas()
    return {c: [None if v is None or math.isnan(v) else round(float(v), 4) for v in pdf[c]] for c in cols}


def sliced_counts(predicted, specs: list[BinSpec], slices: list[str]) -> dict[str, dict[str, dict[str, dict]]]:
    """{slice_key: {slice_value: {feature: {bin: count}}}} for each slice column ``predicted`` has (the monitor's
    drift per slice compares a slice with the same slice of the reference), in one aggregation."""
    from pyspark.sql import functions as F

    banded = with_bands(predicted)
    dims = [d for d in slices if d in banded.columns]
    if not dims:
        return {}
    with_bins, columns = bin_columns(banded, specs)
    rows = (
        with_slices(with_bins, dims)
        .where("slice_key IS NOT NULL AND slice_value IS NOT NULL")
        .select("slice_key", "slice_value", F.explode(bin_pairs(specs, columns)).alias("p"))
        .groupBy("slice_key", "slice_value", "p.f", "p.b")
        .count()
        .collect()
    )
    out: dict[str, dict[str, dict[str, dict]]] = {d: {} for d in dims}
    for r in rows:
        out[r.slice_key].setdefault(r.slice_value, {}).setdefault(r.f, {})[str(int(r.b))] = int(r["count"])
    return out


def build_profile(predicted, month: str, bins: int, slices: list[str] | None = None) -> dict[str, Any]:
    """``predicted``: one month of features with ``predicted_duration_min`` from a model that never saw it;
    ``slices``: the monitor's slice columns, whose per-slice counts the profile keeps too."""
    predicted = predicted.cache()  # predicted once, read by every pass below
    try:
        specs = bin_specs(predicted, bins)
        return {
            "month": month,
            "rows": predicted.count(),
            "specs": [s.to_dict() for s in specs],
            "counts": {f: {str(b): n for b, n in c.items()} for f, c in binned_counts(predicted, specs).items()},
            "sliced_counts": sliced_counts(predicted, specs, slices or []),
            "sample": continuous_sample(predicted, SAMPLE_ROWS),
            "performance": accuracy(predicted),
        }
    finally:
        predicted.unpersist()


def profile_parts(profile: dict[str, Any]):
    """(specs, counts, sample, performance) of a stored profile, with bins back as ints."""
    specs = [BinSpec(**s) for s in profile["specs"]]
    counts = {f: {int(b): n for b, n in c.items()} for f, c in profile["counts"].items()}
    return specs, counts, profile["sample"], profile["performance"]
