"""The bake-off report of a training run: every candidate on the same validation month, side by side.

One self-contained HTML page (inline CSS, a PNG as a data URI, no network) and its JSON, written under
``reports/bakeoff/<service>/`` and logged to the training run in MLflow. Rows: baselines, each learner from scratch,
tuned, warm-started. Columns: RMSE, MAE, RMSLE, bias overall and RMSE by pickup borough, hour band and distance band
(all on the validation month, which no candidate trained on), fit time, prediction speed and model size.
"""

from __future__ import annotations

import html
import time
from typing import Any

from jobs.models.flavors import NativeModel
from jobs.models.metrics import DISTANCE_BANDS, HOUR_BANDS
from jobs.models.prediction import feature_matrix
from jobs.platform import storage
from jobs.platform.reports.figures import png_base64

OVERALL = ("rmse", "mae", "rmsle", "bias", "n")
GROUPS = {
    "pu_borough": "RMSE by pickup borough",
    "hour_band": "RMSE by pickup hour band (" + ", ".join(f"{n} {lo}-{hi}h" for n, lo, hi in HOUR_BANDS) + ")",
    "distance_band": "RMSE by trip distance (miles)",
}


def predict_rate(model: NativeModel, sample) -> float:
    """Rows per second one thread predicts (the scoring path's native call on a float32 matrix)."""
    predict, matrix = model.predictor(), feature_matrix(sample)
    predict(matrix[:100])  # warm-up: first-call set-up (and the network's compilation) is not throughput
    started = time.perf_counter()
    predict(matrix)
    return len(matrix) / max(time.perf_counter() - started, 1e-9)


def model_bytes(model: NativeModel) -> int:
    return model.size_bytes


def row(candidate, chosen: str, sample, interval: dict[str, Any] | None = None) -> dict[str, Any]:
    """One candidate's line of the bake-off (``sample``: validation-month features for the speed measurement)."""
    model = candidate.model
    out = {
        "name": candidate.name,
        "learner": candidate.learner,
        "warm_start": candidate.warm_start,
        "chosen": candidate.name == chosen,
        "metrics": candidate.metrics,
        "fit_seconds": candidate.fit_seconds,
        "predict_rows_per_s": predict_rate(model, sample) if model is not None else None,
        "model_bytes": model_bytes(model) if model is not None else None,
        "params": {k: v for k, v in candidate.params.items()},
        "trained": trained_how(candidate),
        "fit_info": dict(candidate.fit_info),
    }
    if interval and candidate.name == chosen:
        out["interval"] = interval
    return out


def trained_how(candidate) -> str:
    """Where and on what a candidate was fitted, in a few words."""
    if candidate.learner == "baseline":
        return "Spark aggregates"
    if candidate.members:
        return "mean on the log scale of " + " + ".join(m.name for m in candidate.members)
    info = candidate.fit_info
    if "sample_rows" in info:
        return (
            f"driver, {info['sample_rows']:,} of {info['window_rows']:,} rows, {info['epochs_run']} epochs "
            f"(best {info['best_epoch']})"
        )
    return f"Spark, {candidate.train_tasks} barrier tasks" + (
        ", continues the champion" if candidate.warm_start else ""
    )


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _groups(rows: list[dict[str, Any]], by: str) -> list[str]:
    prefix = f"rmse_{by}_"
    names = {k[len(prefix) :] for r in rows for k in r["metrics"] if k.startswith(prefix)}
    if by == "hour_band":
        return [n for n, _, _ in HOUR_BANDS if n in names]
    if by == "distance_band":
        return [n for n, _, _ in DISTANCE_BANDS if n in names]
    return sorted(names)


def _rmse_plot(rows: list[dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = sorted(rows, key=lambda r: -r["metrics"]["rmse"])
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(ranked) + 1))
    colors = ["#1e8449" if r["chosen"] else "#3b6ea5" for r in ranked]
    ax.barh([r["name"] for r in ranked], [r["metrics"]["rmse"] for r in ranked], color=colors)
    ax.set_xlabel("RMSE (minutes) on the validation month")
    fig.tight_layout()
    return png_base64(fig)


def render(report: dict[str, Any]) -> str:
    """The page for one training run's bake-off (``report`` as :func:`jobs.training.job` builds it)."""
    rows = sorted(report["rows"], key=lambda r: r["metrics"]["rmse"])
    best = rows[0]["metrics"]["rmse"]

    def interval_cell(r) -> str:
        i = r.get("interval")
        if not i:
            return ""
        return f"{_fmt(i.get('raw_coverage'))} raw / {_fmt(i.get('coverage'))} calibrated"

    def overall_row(r) -> str:
        rate, size = r["predict_rows_per_s"], r["model_bytes"]
        return (
            f"<tr class='{'chosen' if r['chosen'] else ''}'><td>{html.escape(r['name'])}</td>"
            + "".join(f"<td>{_fmt(r['metrics'].get(k), 0 if k == 'n' else 3)}</td>" for k in OVERALL)
            + f"<td>{'+' if r['metrics']['rmse'] > best else ''}{_fmt(r['metrics']['rmse'] - best)}</td>"
            f"<td>{_fmt(r['fit_seconds'], 1)}</td><td>{'' if rate is None else f'{rate:,.0f}'}</td>"
            f"<td>{'' if size is None else f'{size / 1024:,.0f}'}</td><td>{interval_cell(r)}</td>"
            f"<td class='params'>{html.escape(r.get('trained', ''))}</td></tr>"
        )

    overall = "".join(overall_row(r) for r in rows)
    sections = []
    for by, title in GROUPS.items():
        groups = _groups(rows, by)
        if not groups:
            continue
        head = "".join(f"<th>{html.escape(g.replace('_', ' '))}</th>" for g in groups)
        body = "".join(
            f"<tr class='{'chosen' if r['chosen'] else ''}'><td>{html.escape(r['name'])}</td>"
            + "".join(f"<td>{_fmt(r['metrics'].get(f'rmse_{by}_{g}'))}</td>" for g in groups)
            + "</tr>"
            for r in rows
        )
        counts = "".join(f"<td>{_fmt(rows[0]['metrics'].get(f'n_{by}_{g}'), 0)}</td>" for g in groups)
        sections.append(
            f"<h2>{html.escape(title)}</h2><table id='by_{by}'><tr><th>candidate</th>{head}</tr>{body}"
            f"<tr class='n'><td>trips</td>{counts}</tr></table>"
        )
    tuning = "".join(_tuning_section(t) for t in report.get("tuning", []))
    chosen = next((r for r in rows if r["chosen"]), rows[0])
    runner_up = next((r for r in rows if not r["chosen"]), None)
    margin = (
        f" It beats the next candidate, {html.escape(runner_up['name'])}, by "
        f"{runner_up['metrics']['rmse'] - chosen['metrics']['rmse']:.3f} min RMSE."
        if runner_up
        else ""
    )
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>Bake-off {html.escape(report["service"])} {html.escape(report["valid_month"])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} td:first-child,td.params{{text-align:left}}
tr.chosen{{background:#e3f4e8;font-weight:bold}} tr.n{{color:#666}} .note{{color:#444}}</style></head><body>
<h1>Bake-off: {html.escape(report["service"])}, validation month {html.escape(report["valid_month"])}</h1>
<p class="note" id="honesty">Every number below is measured on <b>{html.escape(report["valid_month"])}</b>
({rows[0]["metrics"].get("n", 0):,.0f} trips of 1-60 min), a month no candidate trained on: the candidates were fitted
on {html.escape(", ".join(report["train_months"]))}. Tuning trials stopped early on, and were ranked on,
{html.escape(report.get("tuning_month") or "no month (no tuning in this run)")}, not on the validation month.
The chosen candidate is then refitted on the training and validation months before registration; the interval's
coverage shown here is on the month that calibrated it (raw: before calibration, out-of-sample for the quantile
models).{_model_notes(rows)} Predict speed: rows per second through the scoring path's call (boosters on one
thread, the network with JAX's threads); size: the serialized model.</p>
<p id="winner">Chosen: <b>{html.escape(chosen["name"])}</b>, RMSE {chosen["metrics"]["rmse"]:.3f} min.{margin}
Registered as version {report.get("registered_version") or "none"}; gate: {html.escape(str(report.get("gate_reason")))}.
</p>
<table id="overall"><tr><th>candidate</th><th>RMSE</th><th>MAE</th><th>RMSLE</th><th>bias</th><th>trips</th>
<th>RMSE vs best</th><th>fit s</th><th>predict rows/s</th><th>size KiB</th><th>80% interval coverage</th>
<th>trained</th></tr>
{overall}</table>
<img alt="RMSE by candidate" src="data:image/png;base64,{_rmse_plot(rows)}"/>
{"".join(sections)}
{tuning}
</body></html>"""


def _model_notes(rows: list[dict[str, Any]]) -> str:
    learners = {r["learner"] for r in rows}
    notes = ""
    if "deep" in learners:
        notes += (
            " The deep network trains on the driver from a bounded sample of the training months and stops early"
            " on a random holdout of that sample (the trained column says how many rows)."
        )
    if "ensemble" in learners:
        notes += " The ensemble is scored as one model on the same month; its fit time is its members'."
    return notes


def _tuning_section(t: dict[str, Any]) -> str:
    trials = t["trials"]
    t0 = min(r["start"] for r in trials)
    body = "".join(
        f"<tr class='{'chosen' if r['rmse'] == t['tuning_rmse'] else ''}'><td>{r['trial']}</td>"
        f"<td>{_fmt(r['rmse'])}</td>"
        f"<td>{r['rounds']}</td><td>{r['workers']}</td><td>{r['start'] - t0:.1f}</td><td>{r['end'] - t0:.1f}</td>"
        f"<td class='params'>{html.escape(', '.join(f'{k}={_fmt(v, 4)}' for k, v in r['params'].items()))}</td></tr>"
        for r in trials
    )
    return (
        f"<h2>Tuning: {html.escape(t['learner'])}</h2><p>{len(trials)} trials (Optuna TPE); RMSE on the tuning "
        f"month {html.escape(t['tuning_month'])}; workers: the barrier tasks of the trial's fit; start and end "
        f"in seconds from the first trial (overlapping trials ran at the same time).</p>"
        f"<table id='tuning_{html.escape(t['learner'])}'><tr><th>trial</th><th>RMSE</th><th>rounds</th><th>workers</th>"
        f"<th>start s</th><th>end s</th><th>parameters</th></tr>"
        f"{body}</table>"
    )


def publish(mlflow, settings, report: dict[str, Any]):
    """Write the page and its JSON under reports/bakeoff/<service>/ and log both to the active training run."""
    import json

    out_dir = settings.reports_dir / "bakeoff" / report["service"]
    storage.makedirs(out_dir)
    stem = f"{report['valid_month']}_{report['run_id'][:8]}"
    page, text = out_dir / f"{stem}.html", render(report)
    page.write_text(text)
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str))
    mlflow.log_text(text, f"bakeoff/{page.name}")
    mlflow.log_dict(json.loads(json.dumps(report, default=str)), "bakeoff/bakeoff.json")
    return page
