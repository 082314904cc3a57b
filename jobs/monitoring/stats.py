"""Drift statistics and the rules that turn them into a verdict.

Bins are fixed from the reference (quantiles for continuous features, the most frequent values for categorical
ones, then "other" and "missing"); both sides are counted in Spark in one pass each. One rule per feature type
decides: PSI for continuous features and the predictions, Jensen-Shannon distance for categorical ones. KS and
Wasserstein distances (on samples) are shown, never judged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from jobs.models.binning import MISSING, BinSpec
from jobs.models.inputs import PREDICTION
from jobs.platform.config import Settings

# Shown but not judged: a week covers every hour and day, so the calendar only mirrors which days it holds, and
# the history level and count describe how much history the pipeline had, not the trips.
CALENDAR = frozenset({"pickup_hour", "hour_of_week", "day_of_week", "is_holiday"})
PIPELINE_STATE = frozenset({"hist_level", "hist_trip_count"})
RULE = {"continuous": "psi", "categorical": "js_distance"}
EPS = 1e-4


# ---------------------------------------------------------------------------------------------------------------
# Pure math (hand-checked in tests)
# ---------------------------------------------------------------------------------------------------------------
def proportions(counts: Sequence[float]) -> list[float]:
    total = sum(counts)
    return [(c / total if total else 0.0) for c in counts]


def psi(reference: Sequence[float], current: Sequence[float], eps: float = EPS) -> float:
    """Population stability index of two binned count vectors (zero shares smoothed to ``eps``)."""
    r = [max(p, eps) for p in proportions(reference)]
    c = [max(p, eps) for p in proportions(current)]
    return sum((ci - ri) * math.log(ci / ri) for ri, ci in zip(r, c, strict=True))


def js_distance(reference: Sequence[float], current: Sequence[float]) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]): the square root of the JS divergence."""
    p, q = proportions(reference), proportions(current)
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]

    def kl(x, y):
        return sum(a * math.log2(a / b) for a, b in zip(x, y, strict=True) if a > 0)

    return math.sqrt(max(0.0, (kl(p, m) + kl(q, m)) / 2))


# ---------------------------------------------------------------------------------------------------------------
# Metrics and rules
# ---------------------------------------------------------------------------------------------------------------
def drift_metrics(
    specs,
    ref_counts,
    cur_counts,
    ref_sample: Mapping[str, Sequence[float]] | None = None,
    cur_sample: Mapping[str, Sequence[float]] | None = None,
) -> list[dict[str, Any]]:
    """One record per feature and metric: psi, js_distance (all), ks, wasserstein (continuous, on samples)."""
    from scipy import stats

    records = []
    for s in specs:
        labels = s.labels()
        r = [ref_counts[s.feature].get(b, 0) for b in labels]
        c = [cur_counts[s.feature].get(b, 0) for b in labels]
        records.append({"feature": s.feature, "metric": "psi", "value": psi(r, c)})
        records.append({"feature": s.feature, "metric": "js_distance", "value": js_distance(r, c)})
        if s.kind == "continuous" and ref_sample is not None and cur_sample is not None:
            a = [v for v in ref_sample.get(s.feature, []) if v is not None and not math.isnan(v)]
            b = [v for v in cur_sample.get(s.feature, []) if v is not None and not math.isnan(v)]
            if a and b:
                records.append({"feature": s.feature, "metric": "ks", "value": float(stats.ks_2samp(a, b).statistic)})
                records.append(
                    {"feature": s.feature, "metric": "wasserstein", "value": float(stats.wasserstein_distance(a, b))}
                )
    return records


def judge_features(specs: list[BinSpec], records, ref_counts, settings: Settings) -> list[dict[str, Any]]:
    """Per feature: the metric that decides (its type's rule), its value and threshold, whether it fired, and
    whether the feature counts toward the verdict (and why not)."""
    m = settings.monitor
    threshold = {"psi": m.psi_threshold, "js_distance": m.js_threshold}
    value = {(r["feature"], r["metric"]): r["value"] for r in records}
    out = []
    for s in specs:
        rule = RULE[s.kind]
        counts = ref_counts.get(s.feature, {})
        missing = counts.get(MISSING, 0) / max(1, sum(counts.values()))
        if s.feature in CALENDAR:
            excluded = "calendar"
        elif s.feature in PIPELINE_STATE:
            excluded = "pipeline state"
        elif missing > m.max_reference_missing:
            excluded = f"{missing:.0%} missing in the reference"
        else:
            excluded = None
        v = value[(s.feature, rule)]
        out.append(
            {
                "feature": s.feature,
                "kind": s.kind,
                "rule": rule,
                "value": v,
                "threshold": threshold[rule],
                "fired": v > threshold[rule],
                "counts": excluded is None,
                "excluded": excluded,
            }
        )
    return out


def verdict(
    judgements, perf: Mapping[str, float], ref_perf: Mapping[str, float], settings: Settings, in_sample: bool = False
) -> dict[str, Any]:
    """The week's verdict: ``error`` (accuracy breach) outranks ``drift``; ``in_sample`` when the scoring model
    trained on the week's month (no verdict on data a model has seen)."""
    m = settings.monitor
    drifted = sorted(j["feature"] for j in judgements if j["counts"] and j["fired"])
    judged = [j["feature"] for j in judgements if j["counts"] and j["feature"] != PREDICTION]
    share = len([f for f in drifted if f != PREDICTION]) / max(1, len(judged))
    key = sorted(set(drifted) & set(m.key_features))
    drift = share >= m.share_of_drifted_features or PREDICTION in drifted or bool(key)
    limit = rmse_limit(ref_perf, settings)
    rmse_breach = perf.get("rmse") is not None and perf["rmse"] > limit
    coverage = perf.get("coverage")  # None: the week's model has no intervals
    coverage_breach = coverage is not None and not m.coverage_min <= coverage <= m.coverage_max
    error = rmse_breach or coverage_breach
    reasons = []
    if rmse_breach:
        reasons.append(f"rmse {perf['rmse']:.3f} > limit {limit:.3f}")
    if coverage_breach:
        reasons.append(f"interval coverage {coverage:.3f} outside [{m.coverage_min}, {m.coverage_max}]")
    if share >= m.share_of_drifted_features:
        reasons.append(f"{share:.0%} of judged features drifted (>= {m.share_of_drifted_features:.0%})")
    if PREDICTION in drifted:
        reasons.append("predictions drifted")
    if key:
        reasons.append(f"key feature drifted: {', '.join(key)}")
    name = "in_sample" if in_sample else ("error" if error else ("drift" if drift else "ok"))
    return {
        "verdict": name,
        "drifted_features": drifted,
        "drifted_share": round(share, 4),
        "rmse_limit": limit,
        "reasons": reasons if not in_sample else ["the scoring model trained on this week's month: no verdict"],
    }


def rmse_limit(ref_perf: Mapping[str, float], settings: Settings) -> float:
    """``rmse_ratio`` x the reference RMSE, capped by the absolute ``rmse_threshold``."""
    m = settings.monitor
    ref = ref_perf.get("rmse")
    return min(m.rmse_threshold, m.rmse_ratio * ref) if ref is not None else m.rmse_threshold


def retrain_decision(this_week: str, earlier: Sequence[str], settings: Settings) -> tuple[bool, str]:
    """(retrain?, why): at once on an error; for drift only when ``drift_weeks`` of the last ``drift_window``
    weeks (this one and the ones before it, oldest first in ``earlier``) drifted."""
    m = settings.monitor
    if this_week == "error":
        return True, "accuracy breach"
    if this_week != "drift":
        return False, f"verdict {this_week}"
    window = [*list(earlier)[-(m.drift_window - 1) :], this_week] if m.drift_window > 1 else [this_week]
    n = sum(v == "drift" for v in window)
    if n >= m.drift_weeks:
        return True, f"drift in {n} of the last {m.drift_window} weeks"
    return False, f"drift in {n} of the last {m.drift_window} weeks (needs {m.drift_weeks})"
