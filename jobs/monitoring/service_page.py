"""The page a user bookmarks: ``<lakehouse>/reports/<service>/index.html``, one per service, rebuilt after every
monitor run (and by ``taxi monitor --metrics``). Self-contained like every page (inline CSS, plots as data URIs).

What it shows, each read from where it is kept: the months landed with their validation verdicts and Data Docs
pages (``monitoring/validation_runs``); the champion's history (the registry's versions with the gate's outcome and
reason, the previous champion each promotion replaced, the aliases now); accuracy and interval coverage per week
with the monitor's alarms marked (``monitoring/accuracy_metrics`` and ``monitoring/drift``); a strip of every judged
feature's drift per week; links to every weekly report, bake-off and backtest page.
"""

from __future__ import annotations

import datetime as dt
import html
import os
from dataclasses import dataclass, field
from typing import Any

from jobs.models import registry
from jobs.platform import lakehouse, sql, storage
from jobs.platform.config import Settings
from jobs.platform.reports.figures import png_base64
from jobs.validation import gx
from jobs.validation import overview as validation_overview

ALARMS = ("drift", "error")


@dataclass
class ServiceFacts:
    service: str
    months: list[dict[str, Any]] = field(default_factory=list)  # latest validation run per month
    docs: dict[str, str] = field(default_factory=dict)  # month -> its Data Docs page, relative to the page
    versions: list[dict[str, Any]] = field(default_factory=list)
    weeks: list[dict[str, Any]] = field(default_factory=list)  # week, verdict, retrain, version, n, rmse, coverage
    drift: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (feature, week) -> rule value
    links: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # section -> [(label, relative href)]
    coverage_range: tuple[float, float] = (0.75, 0.85)


def page_path(settings: Settings, service: str):
    return settings.reports_dir / service / "index.html"


def publish(spark, settings: Settings, service: str):
    """Gather the service's facts and (re)write its page atomically; returns the page's path."""
    page = page_path(settings, service)
    storage.makedirs(page.parent)
    text = render(gather(spark, settings, service, page))
    staged = page.with_name(f".{page.name}.{os.getpid()}.tmp")  # readers never see half a page
    staged.write_text(text, encoding="utf-8")
    storage.move(staged, page)
    return page


def _rows(spark, settings: Settings, table, service: str, where: str = "true") -> list[dict[str, Any]]:
    """The service's rows of a small table (those matching ``where``), as dicts."""
    if not lakehouse.exists(settings, table):
        return []
    rows = lakehouse.read(spark, settings, table).where(sql.matches(service=service)).where(where).collect()
    return [r.asDict(recursive=True) for r in rows]


def gather(spark, settings: Settings, service: str, page) -> ServiceFacts:
    facts = ServiceFacts(service, coverage_range=(settings.monitor.coverage_min, settings.monitor.coverage_max))
    facts.months = validation_overview.latest_runs(_rows(spark, settings, lakehouse.VALIDATION_RUNS, service))
    site = gx.published_root(settings) / gx.DOCS_INDEX.parent
    facts.docs = {m: href for (_, m), href in validation_overview.data_docs_links(site, page, facts.months).items()}
    facts.versions = version_history(settings, service)
    drift = _rows(spark, settings, lakehouse.DRIFT, service)
    whole_weeks = f"{sql.matches(window_type='week')} AND slice_key IS NULL"
    accuracy = _rows(spark, settings, lakehouse.ACCURACY_METRICS, service, whole_weeks)
    facts.weeks = weekly_facts(drift, accuracy)
    facts.drift = {
        (r["feature"], r["week"]): {k: r[k] for k in ("metric", "value", "threshold", "drifted")}
        for r in drift
        if r["judged"]
    }
    reports = settings.reports_dir
    facts.links = {
        "Weekly reports": [(w["week"], f"../drift/{service}/{w['week']}.html") for w in facts.weeks],
        "Bake-offs": _pages(reports / "bakeoff" / service, page),
        "Backtests": _pages(reports / "backtest" / service, page),
        "Validation": [
            ("every service's months", storage.relative_href(gx.published_root(settings) / gx.OVERVIEW, page.parent))
        ],
    }
    return facts


def _pages(folder, page) -> list[tuple[str, str]]:
    if not storage.exists(folder):
        return []
    found = sorted(p for p in folder.iterdir() if p.name.endswith(".html"))
    return [(p.stem, storage.relative_href(p, page.parent)) for p in found]


def version_history(settings: Settings, service: str) -> list[dict[str, Any]]:
    """Every registered version, oldest first, with what the gate said and the aliases it holds now."""
    aliases: dict[str, list[str]] = {}
    for alias in (registry.CHAMPION, registry.CHALLENGER):
        mv = registry.by_alias(settings, service, alias)
        if mv is not None:
            aliases.setdefault(str(mv.version), []).append(alias)
    out = []
    for mv in registry.versions(settings, service):
        tags = mv.tags
        out.append(
            {
                "version": int(mv.version),
                "registered": dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, dt.UTC).strftime(
                    "%Y-%m-%d %H:%M"
                ),
                "candidate": tags.get("candidate", "-"),
                "trained_through": tags.get("trained_through", "-"),
                "valid_month": tags.get("valid_month", "-"),
                "val_rmse": float(tags["val_rmse"]) if tags.get("val_rmse") else None,
                "gate": tags.get("gate", "-"),
                "reason": tags.get("rejected_reason", ""),
                "replaced": tags.get("previous_champion", ""),
                "aliases": ", ".join(aliases.get(str(mv.version), [])),
            }
        )
    return out


def weekly_facts(drift: list[dict[str, Any]], accuracy: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per reported week: the monitor's verdict, and the accuracy of the version that scored the week."""
    verdicts = {r["week"]: r for r in drift}
    measured = {(r["window"], r["model_version"]): r for r in accuracy}
    weeks = []
    for week in sorted(verdicts):
        v = verdicts[week]
        a = measured.get((week, v["model_version"]), {})
        weeks.append(
            {
                "week": week,
                "verdict": v["verdict"],
                "retrain": v["retrain"],
                "model_version": v["model_version"],
                **{k: a.get(k) for k in ("n", "rmse", "coverage")},
            }
        )
    return weeks


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1300px}
table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td.l{text-align:left}.ok,.passed{background:#e8f5e9}.drift{background:#fff3e0}
.error,.failed,.rejected{background:#ffebee}.in_sample{background:#f5f5f5}.note{color:#555;font-size:90%}
.strip td{min-width:3em}"""


def render(f: ServiceFacts) -> str:
    title = f"taxi {f.service}"
    champion = next((v["version"] for v in f.versions if "champion" in v["aliases"]), None)
    links = "".join(
        f"<h3>{html.escape(section)}</h3><p>"
        + (" · ".join(f"<a href='{html.escape(href)}'>{html.escape(label)}</a>" for label, href in items) or "none yet")
        + "</p>"
        for section, items in f.links.items()
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p class='note'>champion: version {champion if champion is not None else 'none'} · "
        f"{len(f.months)} months landed · {len(f.weeks)} weeks reported · "
        f"{sum(w['verdict'] in ALARMS for w in f.weeks)} alarms</p>"
        f"<h2>Accuracy per week</h2>{accuracy_chart(f)}{weeks_table(f)}"
        f"<h2>Drift per judged feature</h2>{drift_strip(f)}"
        f"<h2>Champion history</h2>{versions_table(f)}"
        f"<h2>Months landed</h2>{months_table(f)}"
        f"<h2>Pages</h2>{links}</body></html>"
    )


def _table(header: list[str], rows: list[list[Any]], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table class='{css}'><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
    if isinstance(value, tuple):  # (text, css class[, href])
        text = html.escape(str(value[0]))
        if len(value) > 2 and value[2]:
            text = f"<a href='{html.escape(value[2])}'>{text}</a>"
        return f"<td class='{value[1]}'>{text}</td>"
    shown = "-" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))
    return f"<td>{html.escape(shown)}</td>"


def weeks_table(f: ServiceFacts) -> str:
    if not f.weeks:
        return "<p>No week reported yet.</p>"
    rows = [
        [
            (w["week"], "l", f"../drift/{f.service}/{w['week']}.html"),
            (w["verdict"], w["verdict"]),
            w["retrain"],
            w["model_version"],
            w["n"],
            w["rmse"],
            w["coverage"],
        ]
        for w in f.weeks
    ]
    return _table(["week", "verdict", "retrain", "version", "known trips", "RMSE (min)", "coverage"], rows)


def accuracy_chart(f: ServiceFacts) -> str:
    measured = [w for w in f.weeks if w["rmse"] is not None]
    if not measured:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(len(measured)))
    fig, ax = plt.subplots(figsize=(11, 3))
    ax.plot(x, [w["rmse"] for w in measured], "o-", color="#1f77b4", label="RMSE (min)")
    for verdict, colour in (("drift", "#ef6c00"), ("error", "#c62828")):
        hit = [i for i, w in enumerate(measured) if w["verdict"] == verdict]
        ax.scatter(hit, [measured[i]["rmse"] for i in hit], s=120, facecolors="none", edgecolors=colour, label=verdict)
    ax.set_ylabel("RMSE (min)")
    ax.set_xticks(x, [w["week"] for w in measured], rotation=60, fontsize=7)
    cov = ax.twinx()
    cov.plot(x, [w["coverage"] for w in measured], "s--", color="#2e7d32", label="interval coverage")
    cov.axhspan(*f.coverage_range, color="#2e7d32", alpha=0.08)
    cov.set_ylim(0.5, 1.0)
    cov.set_ylabel("coverage")
    handles = ax.get_legend_handles_labels()[0] + cov.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left", fontsize=8)
    ax.set_title(f"{f.service}: weekly RMSE (alarms circled) and interval coverage (target band shaded)")
    return f"<img alt='weekly accuracy' src='data:image/png;base64,{png_base64(fig)}'>"


def drift_strip(f: ServiceFacts) -> str:
    weeks = sorted({w for _, w in f.drift})
    features = sorted({feat for feat, _ in f.drift})
    if not features:
        return "<p>No judged feature yet.</p>"
    rows = []
    for feat in features:
        row: list[Any] = [(feat, "l")]
        for week in weeks:
            d = f.drift.get((feat, week))
            row.append(None if d is None else (f"{d['value']:.3f}", "drift" if d["drifted"] else "ok"))
        rows.append(row)
    rule = "PSI or JS distance against the scoring version's reference; orange: over its threshold"
    return f"<p class='note'>{rule}</p>" + _table(["feature", *weeks], rows, "strip")


def versions_table(f: ServiceFacts) -> str:
    if not f.versions:
        return "<p>No version registered yet.</p>"
    rows = [
        [
            v["version"],
            (v["aliases"] or "-", "l"),
            (v["registered"], "l"),
            (v["candidate"], "l"),
            v["trained_through"],
            v["valid_month"],
            v["val_rmse"],
            (v["gate"], v["gate"]),
            (v["replaced"] or "-", "l"),
            (v["reason"] or "-", "l"),
        ]
        for v in reversed(f.versions)
    ]
    header = [
        "version",
        "aliases now",
        "registered (UTC)",
        "candidate",
        "trained through",
        "validated on",
        "validation RMSE",
        "gate",
        "replaced version",
        "gate's reason when rejected",
    ]
    return _table(header, rows)


def months_table(f: ServiceFacts) -> str:
    if not f.months:
        return "<p>No month validated yet.</p>"
    rows = [
        [
            (m["month"], "l", f.docs.get(m["month"])),
            (m["verdict"], m["verdict"]),
            m["rows_total"],
            m["rows_valid"],
            m["rows_quarantined"],
            round(100 * m["failed_share"], 2),
        ]
        for m in f.months
    ]
    return _table(["month (Data Docs)", "verdict", "rows", "valid", "quarantined", "failed %"], rows)
