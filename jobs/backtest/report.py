"""The backtest's outputs: the JSON summary, an offline HTML page, the ``monitoring/backtest`` Delta table (read as
``taxi.backtest`` on the SQL endpoint) and an MLflow run holding both files."""

from __future__ import annotations

import html
import json
from typing import Any

from jobs.backtest.policies import is_degraded, judge_monitor, policy_summary
from jobs.backtest.replay import Replayed
from jobs.platform import lakehouse, sql, storage
from jobs.platform.context import RunContext
from jobs.platform.reports.figures import png_base64
from jobs.platform.tracking import experiment_id, setup_mlflow

BACKTEST_SCHEMA = (
    "service string, from_month string, to_month string, month string, policy string, metric string, value double, "
    "run_id string"
)
MONTH_METRICS = ("rmse", "mae", "coverage", "champion_version")


def build(ctx: RunContext, first: str, last: str, outcomes: list, replayed: Replayed) -> dict[str, Any]:
    """The summary every output carries (the JSON's keys)."""
    s = ctx.settings
    names = list(replayed.states)
    months = [month_entry(o, replayed, names) for o in outcomes if first <= o.month <= last]
    rmses = {p: [m["policies"][p]["rmse"] for m in months if m["policies"]] for p in names}
    weeks = [
        {
            **{k: round(v, 4) if isinstance(v, float) else v for k, v in vars(w).items()},
            "degraded": is_degraded(w, s.monitor.rmse_ratio, s.backtest.degraded_share),
            "drift_policy_verdict": replayed.drift_verdicts.get(w.week),
        }
        for w in replayed.weeks
    ]
    return {
        "service": ctx.service,
        "from": first,
        "to": last,
        "months": months,
        "policies": {
            p: {**policy_summary(replayed.states[p], rmses[p]), "promotion_log": replayed.states[p].promotions}
            for p in names
        },
        "monitor": judge_monitor(replayed.weeks, s.monitor.rmse_ratio, s.backtest.degraded_share),
        "weeks": weeks,
        "history": [{"month": o.month, "status": o.status, "detail": o.detail} for o in outcomes if o.month < first],
        "measured_on": {
            "rmse": f"trips of {s.features.target_min_minutes:g}-{s.features.target_max_minutes:g} min, each month "
            "scored by a model trained only on earlier months (out-of-sample)",
            "monthly": "the real run: read from gold/predictions",
            "counterfactuals": "frozen, drift, always: predicted from silver/features with the shared trainings",
            "degraded": f"week RMSE > {s.monitor.rmse_ratio} x the reference RMSE, or > "
            f"{1 + s.backtest.degraded_share:g} x the always policy's RMSE on the same trips",
            "train_seconds": "wall time of the shared trainings a policy uses (the first, on history, not counted)",
        },
    }


def month_entry(outcome, replayed: Replayed, names: list[str]) -> dict[str, Any]:
    entry = {"month": outcome.month, "status": outcome.status, "detail": outcome.detail, "rows": None, "policies": {}}
    if outcome.status != "scored":
        return entry
    entry["rows"] = replayed.month_sums("monthly", outcome.month).rows
    for p in names:
        version = replayed.used[p][outcome.month]
        entry["policies"][p] = {
            **replayed.month_sums(p, outcome.month).metrics(),
            "champion_version": version,
            "trained_through": replayed.trained_through.get(version),
        }
    return entry


def publish(ctx: RunContext, result: dict[str, Any]) -> dict[str, str]:
    """JSON and HTML under ``<lakehouse>/reports/backtest/<service>/``, the Delta rows, the MLflow run."""
    out_dir = ctx.settings.reports_dir / "backtest" / ctx.service
    storage.makedirs(out_dir)
    stem = f"{result['from']}_{result['to']}"
    text, page = json.dumps(result, indent=1, default=str), html_page(result)
    (out_dir / f"{stem}.json").write_text(text)
    (out_dir / f"{stem}.html").write_text(page)
    version = write_table(ctx, result)
    mlflow = setup_mlflow(ctx.settings)
    exp = experiment_id(ctx.settings, f"backtest-{ctx.service}")
    with mlflow.start_run(experiment_id=exp, run_name=f"{ctx.service}-{stem}") as run:
        mlflow.log_params({"service": ctx.service, "from": result["from"], "to": result["to"]})
        mlflow.log_metrics(
            {f"{p}_{k}": v for p, s in result["policies"].items() for k, v in s.items() if isinstance(v, int | float)}
        )
        mlflow.log_text(text, f"backtest/{stem}.json")
        mlflow.log_text(page, f"backtest/{stem}.html")
    return {
        "json": str(out_dir / f"{stem}.json"),
        "html": str(out_dir / f"{stem}.html"),
        "table_version": version,
        "mlflow_run_id": run.info.run_id,
    }


def table_rows(result: dict[str, Any], run_id: str) -> list[tuple]:
    """Month x policy x metric, then each policy's totals and the monitor's counts (month ``all``)."""
    key = (result["service"], result["from"], result["to"])
    rows = []
    for m in result["months"]:
        for policy, figures in m["policies"].items():
            rows += [(*key, m["month"], policy, k, figures[k], run_id) for k in MONTH_METRICS]
            rows.append((*key, m["month"], policy, "rows", m["rows"], run_id))
    for policy, s in result["policies"].items():
        rows += [(*key, "all", policy, k, v, run_id) for k, v in s.items() if isinstance(v, int | float)]
    for k, v in result["monitor"].items():
        counts = v if isinstance(v, dict) else {"": v}
        rows += [(*key, "all", "monitor", f"{k}_{kind}".rstrip("_"), n, run_id) for kind, n in counts.items()]
    return [(*r[:6], float(r[6]), r[7]) for r in rows if r[6] is not None]


def write_table(ctx: RunContext, result: dict[str, Any]) -> int:
    """Replace this range's rows of ``monitoring/backtest`` in one commit."""
    from pyspark.sql import functions as F

    df = ctx.spark.createDataFrame(table_rows(result, ctx.run_id), BACKTEST_SCHEMA)
    where = sql.matches(service=ctx.service, from_month=result["from"], to_month=result["to"])
    df = df.withColumn("computed_at", F.current_timestamp())
    return lakehouse.replace_where(df, ctx.settings, lakehouse.BACKTEST, ctx.run_id, where)


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}td.l{text-align:left}
.ok{background:#e8f5e9}.drift{background:#fff3e0}.error{background:#ffebee}.deg{font-weight:bold;color:#b71c1c}
.note{color:#555;font-size:90%}"""


def html_page(result: dict[str, Any]) -> str:
    """One self-contained page (inline CSS, the chart as a data URI): no network needed."""
    title = f"Backtest {result['service']} {result['from']} .. {result['to']}"
    notes = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in result["measured_on"].items())
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><ul class='note'>{notes}</ul>"
        f"<h2>Policies</h2>{policies_table(result)}"
        f"<h2>RMSE per month (minutes)</h2>{rmse_chart(result)}{months_table(result)}"
        f"<h2>Promotions</h2>{promotions_table(result)}"
        f"<h2>The monitor against reality</h2>{monitor_table(result)}{weeks_table(result)}"
        "</body></html>"
    )


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
    if isinstance(value, tuple):  # (text, css class)
        return f"<td class='{value[1]}'>{html.escape(str(value[0]))}</td>"
    text = "-" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))
    return f"<td>{html.escape(text)}</td>"


def policies_table(result: dict[str, Any]) -> str:
    rows = [
        [(p, "l"), s["mean_rmse"], s["trainings"], round(s["train_seconds"] / 60, 1), s["promotions"]]
        for p, s in result["policies"].items()
    ]
    return _table(["policy", "mean RMSE", "trainings", "training minutes", "promotions"], rows)


def months_table(result: dict[str, Any]) -> str:
    names = list(result["policies"])
    rows = []
    for m in result["months"]:
        cells = [(m["month"], "l"), m["rows"], (m["status"] + (f": {m['detail']}" if m["detail"] else ""), "l")]
        for p in names:
            f = m["policies"].get(p)
            cells += [f["rmse"], f["coverage"], f"v{f['champion_version']}"] if f else [None, None, None]
        rows.append(cells)
    header = ["month", "trips", "status"] + [f"{p} {k}" for p in names for k in ("RMSE", "coverage", "model")]
    return _table(header, rows)


def promotions_table(result: dict[str, Any]) -> str:
    rows = [
        [(p, "l"), e["month"], f"v{e['version']}", (e["reason"], "l")]
        for p, s in result["policies"].items()
        for e in s["promotion_log"]
    ]
    return _table(["policy", "after month", "version", "why"], rows) if rows else "<p>No promotion.</p>"


def monitor_table(result: dict[str, Any]) -> str:
    m = result["monitor"]
    rows = [[(k, "l"), m["alarms"][k], m["hits"][k], m["false_alarms"][k], m["misses"][k]] for k in m["alarms"]]
    summary = f"<p>{m['weeks']} judged weeks, {m['degraded']} degraded.</p>"
    return summary + _table(["alarm", "alarms", "hits", "false alarms", "misses"], rows)


def weeks_table(result: dict[str, Any]) -> str:
    rows = [
        [
            (w["week"], "l"),
            (w["verdict"], w["verdict"]),
            w["rmse"],
            w["reference_rmse"],
            w["freshest_rmse"],
            ("degraded", "deg") if w["degraded"] else ("normal", "l"),
            (w["drift_policy_verdict"] or "-", w["drift_policy_verdict"] or "l"),
        ]
        for w in result["weeks"]
    ]
    header = ["week", "verdict", "RMSE", "reference RMSE", "freshest RMSE", "reality", "drift policy's verdict"]
    return _table(header, rows)


def rmse_chart(result: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [m for m in result["months"] if m["policies"]]
    if not scored:
        return "<p>No month was scored.</p>"
    fig, ax = plt.subplots(figsize=(9, 3.5))
    styles = zip(("-", "--", "-.", ":"), ("o", "s", "^", "x"), strict=True)
    for p, (line, marker) in zip(result["policies"], styles, strict=False):  # distinct: policies often coincide
        rmse = [m["policies"][p]["rmse"] for m in scored]
        ax.plot([m["month"] for m in scored], rmse, linestyle=line, marker=marker, label=p)
    ax.set_ylabel("RMSE (min)")
    ax.legend()
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return f"<img alt='RMSE per month per policy' src='data:image/png;base64,{png_base64(fig)}'>"
