"""The weekly drift report: one self-contained HTML page (inline CSS, PNG plots as data URIs, no network)."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from jobs.models.binning import MISSING, OTHER, BinSpec
from jobs.models.inputs import BOROUGHS
from jobs.monitoring.stats import proportions
from jobs.platform.reports.figures import png_base64

ZONE_FEATURES = ("PULocationID", "DOLocationID")
BOROUGH_FEATURES = ("pu_borough_code", "do_borough_code")


def zone_names(lookup_csv) -> dict[int, str]:
    import pandas as pd

    z = pd.read_csv(lookup_csv)
    return {int(r.LocationID): f"{r.Zone} ({r.Borough})" for r in z.itertuples()}


def bin_labels(spec: BinSpec, zones: dict[int, str]) -> list[str]:
    """Readable names of a spec's bins, in ``spec.labels()`` order: real edges, zone and borough names."""

    def category(value: float) -> str:
        if spec.feature in ZONE_FEATURES:
            return zones.get(int(value), f"zone {int(value)}")
        if spec.feature in BOROUGH_FEATURES and 0 <= int(value) < len(BOROUGHS):
            return BOROUGHS[int(value)]
        return f"{value:g}"

    names = []
    for b in spec.labels():
        if b == MISSING:
            names.append("missing")
        elif b == OTHER:
            names.append("other")
        elif spec.kind == "categorical":
            names.append(category(spec.categories[b]))
        elif b == 0:
            names.append(f"<= {spec.edges[0]:.3g}")
        elif b == len(spec.edges):
            names.append(f"> {spec.edges[-1]:.3g}")
        else:
            names.append(f"{spec.edges[b - 1]:.3g} - {spec.edges[b]:.3g}")
    return names


def _histogram(spec: BinSpec, names: list[str], ref: dict[int, int], cur: dict[int, int], title: str, week: str):
    import matplotlib.pyplot as plt

    labels = spec.labels()
    r = proportions([ref.get(b, 0) for b in labels])
    c = proportions([cur.get(b, 0) for b in labels])
    if spec.kind == "categorical" and len(labels) > 14:  # the largest categories by either side, then other/missing
        keep = sorted(range(len(labels) - 2), key=lambda i: -max(r[i], c[i]))[:12]
        idx = [*sorted(keep), len(labels) - 2, len(labels) - 1]
    else:
        idx = list(range(len(labels)))
    fig, ax = plt.subplots(figsize=(7, 3.4))
    x = list(range(len(idx)))
    ax.bar([i - 0.2 for i in x], [r[i] for i in idx], width=0.4, label="reference")
    ax.bar([i + 0.2 for i in x], [c[i] for i in idx], width=0.4, label=f"week {week}")
    ax.set_xticks(x, [names[i][:28] for i in idx], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("share of trips")
    ax.set_title(title)
    ax.legend()
    return png_base64(fig)


def _accuracy_plots(residuals: list[dict[str, Any]], scatter, perf_history, rmse_limit: float) -> list[str]:
    import matplotlib.pyplot as plt

    images = []
    if residuals:
        fig, ax = plt.subplots(figsize=(7, 3))
        hours = [r["hour_of_week"] for r in residuals]
        ax.bar(hours, [r["mean_residual"] for r in residuals], width=1.0, color="#3b6ea5")
        ax.axhline(0, color="black", lw=0.8)
        ax.set(
            xlabel="hour of week (0 = Monday 00:00)",
            ylabel="mean residual, minutes",
            title="Residuals (predicted - actual) by hour of week",
        )
        images.append(png_base64(fig))
    if scatter is not None and len(scatter):
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.scatter(scatter["actual"], scatter["predicted"], s=3, alpha=0.3)
        ax.plot([0, 60], [0, 60], color="red", lw=1)
        ax.set(xlabel="actual minutes", ylabel="predicted minutes", title="Predicted vs actual")
        images.append(png_base64(fig))
    if perf_history:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot([w for w, _ in perf_history], [v for _, v in perf_history], marker="o", label="week RMSE")
        ax.axhline(rmse_limit, color="red", lw=1, ls="--", label="error limit")
        ax.set_title("RMSE (minutes) over weeks")
        ax.tick_params(axis="x", rotation=45)
        ax.legend()
        images.append(png_base64(fig))
    return images


def _num(v) -> str:
    return "" if v is None else f"{v:.4f}"


@dataclass(frozen=True)
class DriftFigures:
    """What the feature table and histograms show: every judgement and metric, the bins and both sides' counts."""

    judgements: list[dict[str, Any]]
    records: list[dict[str, Any]]
    specs: list[BinSpec]
    ref_counts: dict
    cur_counts: dict


@dataclass(frozen=True)
class AccuracyFigures:
    """What the accuracy plots show: mean residual by hour of week, predicted vs actual, the RMSE over weeks."""

    residuals: list
    scatter: Any
    perf_history: list[tuple[str, float]]


def html_report(summary: dict, drift: DriftFigures, zones, accuracy: AccuracyFigures, mlflow_link: str) -> str:
    """Verdict and reasons; accuracy of the week next to the reference's with the limit; every feature's metrics,
    rule, threshold and whether it counts; histograms of the judged features that moved most; residual plots."""
    import matplotlib

    matplotlib.use("Agg")

    judgements, records, specs = drift.judgements, drift.records, drift.specs
    ref_counts, cur_counts = drift.ref_counts, drift.cur_counts
    residuals, scatter, perf_history = accuracy.residuals, accuracy.scatter, accuracy.perf_history
    week, ref = summary["week"], summary["reference"]
    metrics: dict[str, dict[str, float]] = {}
    for r in records:
        metrics.setdefault(r["feature"], {})[r["metric"]] = r["value"]
    spec_of = {s.feature: s for s in specs}
    ranked = sorted(judgements, key=lambda j: (not j["counts"], -j["value"] / j["threshold"]))
    images = [
        _histogram(
            spec_of[j["feature"]],
            bin_labels(spec_of[j["feature"]], zones),
            ref_counts[j["feature"]],
            cur_counts[j["feature"]],
            f"{j['feature']}: {j['rule']} {j['value']:.3f} (threshold {j['threshold']})",
            week,
        )
        for j in ranked[:6]
    ]
    images += _accuracy_plots(residuals, scatter, perf_history, summary["rmse_limit"])
    rows = "".join(
        f"<tr class='{'drift' if j['fired'] and j['counts'] else ('fired' if j['fired'] else '')}'>"
        f"<td>{html.escape(j['feature'])}</td><td>{j['kind']}</td>"
        + "".join(f"<td>{_num(metrics[j['feature']].get(k))}</td>" for k in ("psi", "js_distance", "ks", "wasserstein"))
        + f"<td>{j['rule']} &gt; {j['threshold']}</td><td>{'yes' if j['fired'] else 'no'}</td>"
        f"<td>{'yes' if j['counts'] else 'no: ' + html.escape(j['excluded'])}</td></tr>"
        for j in ranked
    )
    perf, ref_perf = summary["performance"], summary["reference_performance"]
    keys = sorted(set(perf) | set(ref_perf), key=lambda k: (k.startswith("rmse_"), k))
    perf_rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_num(ref_perf.get(k))}</td><td>{_num(perf.get(k))}</td></tr>" for k in keys
    )
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in summary["reasons"]) or "<li>no rule fired</li>"
    lo, hi = summary.get("coverage_range", (None, None))
    coverage_rule = (
        f", or when the share of trips inside their prediction interval (coverage) leaves [{lo}, {hi}]. The reference"
        " has no coverage: its month calibrated the intervals, so coverage there is fitted, not measured"
        if "coverage" in perf
        else ""
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Drift report {summary["service"]} {week}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} td:first-child{{text-align:left}}
tr.drift{{background:#fdd}} tr.fired{{background:#fff4d6}} .verdict{{font-size:1.4em}} img{{margin:4px}}</style>
</head><body>
<h1>Drift report: {summary["service"]}, week {week}</h1>
<p class="verdict" id="verdict">Verdict: <b>{summary["verdict"]}</b> (retrain: {summary["retrain"]})</p>
<ul id="reasons">{reasons}<li>retrain: {html.escape(summary["retrain_reason"])}</li></ul>
<p id="reference">Reference (out-of-sample): {ref["month"]}, the validation month of model version
{summary["model_version"]}, predicted by that model before its refit ({ref["rows"]} trips); that version has seen
months through {ref["trained_through"]}. Current: {summary["current_rows"]} trips of week {week} scored by version
{summary["model_version"]}, {summary["known_rows"]} of them with a known duration (1-60 min).
MLflow: {mlflow_link}.</p>
<h2>Accuracy (trips with a known duration)</h2>
<p>Error when the week's RMSE exceeds {summary["rmse_limit"]:.3f} (the smaller of rmse_ratio x reference RMSE and
the absolute ceiling){coverage_rule}.</p>
<table id="performance"><tr><th>metric</th><th>reference {ref["month"]}</th><th>week {week}</th></tr>{perf_rows}
</table>
{_shadow_section(summary)}
<h2>Features</h2><p>Judged features drift by their type's rule; calendar and pipeline-state features, and features
mostly missing in the reference, are shown but do not count toward the verdict.</p>
<table id="features"><tr><th>feature</th><th>type</th><th>PSI</th><th>JS distance</th><th>KS</th><th>Wasserstein</th>
<th>rule</th><th>fired</th><th>counts</th></tr>{rows}</table>
<h2>Plots</h2>{"".join(f"<img src='data:image/png;base64,{i}'/>" for i in images)}
</body></html>"""


def _shadow_section(summary: dict[str, Any]) -> str:
    """The challenger in shadow against the champion on the same trips (nothing when no challenger scored)."""
    shadow = summary.get("shadow")
    if not shadow:
        return ""
    champion, challenger = shadow["champion"], shadow["challenger"]
    keys = sorted(set(champion) | set(challenger), key=lambda k: ("_pu_borough_" in k, k))
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{_num(champion.get(k))}</td><td>{_num(challenger.get(k))}</td></tr>"
        for k in keys
    )
    wins = {True: "the challenger wins (lower RMSE)", False: "the champion wins", None: "no known durations yet"}
    return f"""<h2>Shadow: challenger v{shadow["challenger_version"]}</h2>
<p id="shadow-verdict">On the same {shadow["known_rows"]} trips with a known duration:
{wins[shadow["challenger_wins"]]}.
The challenger scored them into gold/shadow_predictions (never shown to BI tools); promote it with
<code>taxi promote --version {shadow["challenger_version"]}</code>.</p>
<table id="shadow"><tr><th>metric</th><th>champion v{summary["model_version"]}</th>
<th>challenger v{shadow["challenger_version"]}</th></tr>{rows}</table>"""
