"""``monitoring/drift_metrics`` (``taxi.drift_metrics``): how far each monitored feature and the prediction moved,
per window, slice and model version, against two baselines.

Keys as the other metric tables (``service``, ``window_type``, ``window``, ``slice_key``, ``slice_value``,
``model_version``), then ``column``, ``baseline`` and ``baseline_window``, the trips counted on each side (``n``,
``baseline_n``) and ``psi``, ``js_distance``, ``ks``, ``wasserstein``:

- ``baseline = reference``: the version's reference profile (its validation month, predicted by a model that
  never trained on it). The whole population is compared with the profile's own counts, so its PSI and JS
  distance are the weekly report's; a slice is compared with the same slice of the reference month (the profile
  keeps per-slice counts for the slices configured at training; for another slice the reference month's features
  are binned, without the prediction).
- ``baseline = previous_window``: the same slice in the window before (the week before, the month before), as the
  champion of that time scored it: "since when does Queens drift?".

Every side is binned with the version's reference bins (quantile edges, top categories, other, missing) in one
aggregation per version: windows x slices x columns x bins, no loop over slices. PSI and JS distance are computed
as the monitor computes them; KS and Wasserstein (continuous columns only) here come from the bins: KS is the
largest gap between the two CDFs at the bin edges (a lower bound of the exact KS), Wasserstein the area between
them over the bounded bins. The weekly report's KS and Wasserstein come from row samples instead.
"""

from __future__ import annotations

import itertools
from typing import Any

from jobs.models import registry
from jobs.models.binning import MISSING, bin_columns, bin_pairs
from jobs.models.inputs import PREDICTION
from jobs.models.metrics import with_slices
from jobs.models.profile import profile_parts
from jobs.monitoring.stats import js_distance, proportions, psi
from jobs.monitoring.weeks import KEYS, with_windows
from jobs.platform import lakehouse
from jobs.platform.config import Settings
from jobs.platform.months import add_months, add_weeks

DRIFT_COLUMNS = (
    *KEYS,
    "column",
    "baseline",
    "baseline_window",
    "n",
    "baseline_n",
    "psi",
    "js_distance",
    "ks",
    "wasserstein",
)
REFERENCE = "reference"


def previous(window_type: str, window: str) -> str:
    return add_weeks(window, -1) if window_type == "week" else add_months(window, -1)


# ---- the math on two binned count vectors ----------------------------------------------------------------------
def distances(spec, baseline: dict[int, int], current: dict[int, int]) -> dict[str, float | None]:
    """PSI and JS distance over every bin; for a continuous column, KS and Wasserstein from the CDFs at the bin
    edges (the missing bin left out)."""
    labels = spec.labels()
    b, c = [baseline.get(x, 0) for x in labels], [current.get(x, 0) for x in labels]
    out: dict[str, float | None] = {"psi": psi(b, c), "js_distance": js_distance(b, c), "ks": None, "wasserstein": None}
    inner = [x for x in labels if x != MISSING]
    if spec.kind != "continuous" or not spec.edges:
        return out
    fb = list(itertools.accumulate(proportions([baseline.get(x, 0) for x in inner])))
    fc = list(itertools.accumulate(proportions([current.get(x, 0) for x in inner])))
    if not fb[-1] or not fc[-1]:
        return out
    gaps = [abs(p - q) for p, q in zip(fb[: len(spec.edges)], fc[: len(spec.edges)], strict=True)]
    widths = [hi - lo for lo, hi in itertools.pairwise(spec.edges)]
    out["ks"] = max(gaps)
    out["wasserstein"] = sum(g * w for g, w in zip(gaps, widths, strict=False))
    return out


# ---- the Spark side: binned counts of every window and slice ---------------------------------------------------
def binned(frame, specs, slices: list[str], windows: dict[str, Any]) -> dict[tuple, dict[int, int]]:
    """{(window_type, window, slice_key, slice_value, column): {bin: trips}} of ``frame``, in one pass over it."""
    from pyspark.sql import functions as F

    # Bins first, once per trip. Then the trips of each window are counted per bin and combination of slice values
    # (a few thousand rows, not trips x slices x columns), and only those counts are multiplied into the slices.
    with_bins, columns = bin_columns(frame, specs)
    values = [F.col(d).cast("string").alias(d) for d in slices]
    combos = (
        with_windows(with_bins, slices, windows)
        .select("window_type", "window", *values, F.explode(bin_pairs(specs, columns)).alias("p"))
        .groupBy("window_type", "window", *slices, F.col("p.f").alias("f"), F.col("p.b").alias("b"))
        .count()
    )
    rows = with_slices(combos, slices).groupBy(*KEYS[1:5], "f", "b").agg(F.sum("count").alias("count")).collect()
    out: dict[tuple, dict[int, int]] = {}
    for r in rows:
        out.setdefault((r.window_type, r.window, r.slice_key, r.slice_value, r.f), {})[int(r.b)] = int(r["count"])
    return out


def rows(spark, settings: Settings, service: str, trips, windows: dict[str, Any], targets: dict[str, list[str]]):
    """DRIFT_COLUMNS rows of the ``targets`` windows ({window_type: [window, ...]}) from ``trips``: the scored trips
    of the targets and of the windows before them (``_champion`` true on the champion's rows), ``windows``
    ({window_type: column}) naming each trip's window of either kind."""
    from pyspark.sql import functions as F

    in_target = F.lit(False)
    for window_type, names in targets.items():  # a trip outside every window of a type has null there: not a target
        in_target = in_target | F.coalesce(windows[window_type].isin(names), F.lit(False))
    versions = sorted(r[0] for r in trips.where(in_target).select("model_version").distinct().collect())
    out = []
    for version in versions:
        profile = registry.load_reference_profile(registry.version(settings, service, version))
        mine = (F.col("model_version") == version) & in_target
        # The windows before are the champion's rows, binned with this version's bins.
        specs = profile_parts(profile)[0]
        counts = binned(trips.where(mine | (F.col("_champion") & ~in_target)), specs, settings.monitor.slices, windows)
        out += version_rows(spark, settings, service, version, profile, counts, targets)
    return spark.createDataFrame(out, schema=schema())


def version_rows(spark, settings: Settings, service: str, version: int, profile, counts, targets) -> list[tuple]:
    """One version's rows: each target window x slice x column against its reference and its window before."""
    specs, ref_counts, _, _ = profile_parts(profile)
    month = profile["month"]
    reference = reference_slices(spark, settings, service, profile, specs)
    by_feature = {s.feature: s for s in specs}
    out = []
    for (window_type, window, key, value, column), current in counts.items():
        if window not in targets.get(window_type, []):
            continue
        before = previous(window_type, window)
        baselines = {
            REFERENCE: (month, ref_counts.get(column) if key is None else reference.get((key, value, column))),
            "previous_window": (before, counts.get((window_type, before, key, value, column))),
        }
        for baseline, (baseline_window, counted) in baselines.items():
            if counted:
                measured = distances(by_feature[column], counted, current)
                keys = (service, window_type, window, key, value, version, column, baseline, baseline_window)
                out.append((*keys, sum(current.values()), sum(counted.values()), *measured.values()))
    return out


def reference_slices(spark, settings: Settings, service: str, profile, specs) -> dict[tuple, dict[int, int]]:
    """{(slice_key, slice_value, column): {bin: trips}} of the reference month: from the profile (written at
    training for the slices configured then), else binned now from the month's features (no prediction)."""
    from pyspark.sql import functions as F

    stored = profile.get("sliced_counts", {})
    out = {
        (key, value, column): {int(b): n for b, n in bins.items()}
        for key, values in stored.items()
        for value, columns in values.items()
        for column, bins in columns.items()
    }
    missing = [d for d in settings.monitor.slices if d not in stored]
    if missing:  # a version trained before these slices were configured
        month = profile["month"]
        features = lakehouse.read(spark, settings, lakehouse.FEATURES)
        trips = features.where((F.col("service") == service) & (F.col("month") == month))
        numbers = [s for s in specs if s.feature != PREDICTION]
        for (_, _, key, value, column), bins in binned(trips, numbers, missing, {REFERENCE: F.lit(month)}).items():
            if key is not None and value is not None:
                out[(key, value, column)] = bins
    return out


def schema():
    from pyspark.sql import types as T

    text, number = T.StringType(), T.DoubleType()
    kinds = {"model_version": T.IntegerType(), "n": T.LongType(), "baseline_n": T.LongType()}
    kinds.update(dict.fromkeys(("psi", "js_distance", "ks", "wasserstein"), number))
    return T.StructType([T.StructField(c, kinds.get(c, text)) for c in DRIFT_COLUMNS])
