"""The validation overview: one self-contained page (inline CSS, embedded plots, no network) with the months of
each service side by side, read from ``monitoring/validation_runs``.

One row per service and month (its latest run): verdict, rows, valid, quarantined, failed share, and per rule the
failing rows with the change from the previous month; a trend plot per service; each month links to its Data Docs
page. Written to ``<lakehouse>/reports/validation/index.html`` after every validation.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

from jobs.platform import storage
from jobs.platform.reports.figures import png_base64


def latest_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The latest run of each (service, month), ordered by service then month."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for run in sorted(runs, key=lambda r: r["started_at"]):
        latest[(run["service"], run["month"])] = run
    return [latest[k] for k in sorted(latest)]


def rule_changes(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, tuple[int, int | None]]]:
    """{(service, month): {rule: (failing rows, change from the service's previous month or None)}}."""
    out: dict[tuple[str, str], dict[str, tuple[int, int | None]]] = {}
    previous: dict[str, dict[str, int]] = {}
    for run in rows:
        counts = dict(run.get("rule_failures") or {})
        before = previous.get(run["service"])
        rules = sorted(set(counts) | set(before or {}))  # a rule that stopped failing shows its drop to 0
        out[(run["service"], run["month"])] = {
            rule: (counts.get(rule, 0), None if before is None else counts.get(rule, 0) - before.get(rule, 0))
            for rule in rules
        }
        previous[run["service"]] = counts
    return out


def _trend_plot(service: str, rows: list[dict[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    months = [r["month"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 2.4))
    ax.bar(months, [r["rows_quarantined"] for r in rows], color="#f0b27a", label="quarantined rows")
    ax.set_ylabel("quarantined rows")
    share = ax.twinx()
    share.plot(months, [100 * r["failed_share"] for r in rows], "o-", color="#c0392b", label="failed share %")
    share.set_ylabel("failed share %")
    ax.set_title(f"{service}: quarantined rows and failed share by month")
    ax.tick_params(axis="x", labelrotation=45)
    return png_base64(fig)


def render(rows: list[dict[str, Any]], links: dict[tuple[str, str], str]) -> str:
    """The page for ``rows`` (latest runs); ``links`` maps (service, month) to its Data Docs page (relative)."""
    changes = rule_changes(rows)
    rules = sorted({rule for per in changes.values() for rule in per})

    def change(delta: int | None) -> str:
        if delta is None:
            return ""
        cls = "up" if delta > 0 else "down" if delta < 0 else "same"
        return f" <span class='{cls}'>({delta:+d})</span>"

    body = []
    for run in rows:
        key = (run["service"], run["month"])
        month = html.escape(run["month"])
        month_cell = f"<a href='{html.escape(links[key])}'>{month}</a>" if key in links else month
        per_rule = "".join(
            f"<td>{changes[key][r][0]}{change(changes[key][r][1])}</td>" if r in changes[key] else "<td></td>"
            for r in rules
        )
        reason = f" title='{html.escape(run['reason'])}'" if run.get("reason") else ""
        body.append(
            f"<tr class='{html.escape(run['verdict'])}'><td>{html.escape(run['service'])}</td><td>{month_cell}</td>"
            f"<td{reason}>{html.escape(run['verdict'])}</td><td>{run['rows_total']}</td><td>{run['rows_valid']}</td>"
            f"<td>{run['rows_quarantined']}</td><td>{100 * run['failed_share']:.2f}%</td>{per_rule}</tr>"
        )
    services = sorted({r["service"] for r in rows})
    plots = "".join(
        f"<img alt='{s} trend' src='data:image/png;base64,{_trend_plot(s, [r for r in rows if r['service'] == s])}'/>"
        for s in services
    )
    head = "".join(f"<th class='rule'>{html.escape(r)}</th>" for r in rules)
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>Validation overview</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}} td:nth-child(-n+3){{text-align:left}}
th.rule{{writing-mode:vertical-rl;transform:rotate(180deg);text-align:left}} tr.rejected{{background:#fdd}}
.up{{color:#c0392b}} .down{{color:#1e8449}} .same{{color:#888}} img{{margin:4px}}</style></head><body>
<h1>Validation overview</h1>
<p>The latest validation run of each service and month. A month is rejected when a file rule fails or more than
the configured share of rows fails the row rules; otherwise its failing rows are quarantined with the rules they
broke. Rule columns: failing rows, and in brackets the change from the service's previous month. Each month links
to its Data Docs page.</p>
<table id="months"><tr><th>service</th><th>month</th><th>verdict</th><th>rows</th><th>valid</th>
<th>quarantined</th><th>failed share</th>{head}</tr>{"".join(body)}</table>
<h2>Trends</h2>{plots}
</body></html>"""


def data_docs_links(site: Path, page: Path, rows: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(service, month) -> the row suite's Data Docs page of its latest run, relative to ``page``."""
    links = {}
    for run in rows:
        found = sorted((site / "validations").glob(f"*_rows/{run['service']}-{run['month']}-{run['run_id']}/*/*.html"))
        found = found or sorted((site / "validations").glob(f"*/{run['service']}-{run['month']}-{run['run_id']}/*/*"))
        if found:
            links[(run["service"], run["month"])] = storage.relative_href(found[0], page.parent)
    return links


def write(runs: list[dict[str, Any]], page: Path, site: Path) -> Path:
    """Render the overview of ``runs`` (validation_runs rows) to ``page``, atomically."""
    rows = latest_runs(runs)
    tmp = page.with_name(f".{page.name}.{os.getpid()}.tmp")
    tmp.write_text(render(rows, data_docs_links(site, page, rows)), encoding="utf-8")
    tmp.replace(page)
    return page
