"""Pages that render with no network: the vendored assets are the pinned npm files, and the rewrite points every
Data Docs page at them (unit); the real Data Docs, overview and drift report render in Chromium offline (slow)."""

from __future__ import annotations

import hashlib
import json

import pytest

from jobs.platform.reports import offline

from .processes import chromium_probe

DEFAULT_TIER = "unit"


def test_vendored_assets_are_the_pinned_npm_files_with_their_licences():
    manifest = json.loads((offline.VENDOR / "MANIFEST.json").read_text())
    for package, entry in manifest.items():
        folder = offline.VENDOR / package.replace("/", "__")
        assert entry["tarball"].startswith("https://registry.npmjs.org/") and entry["license"], package
        for rel, sha in entry["files"].items():
            assert hashlib.sha256((folder / rel).read_bytes()).hexdigest() == sha, f"{package}/{rel}"
    for rel in offline.CDN_FILES.values():  # every URL GX uses has its file
        package, _, path = rel.partition("/")
        assert path in manifest[package.replace("__", "/")]["files"], rel


def test_a_page_is_pointed_at_the_local_copies_and_an_unknown_cdn_link_is_an_error(tmp_path):
    site = tmp_path / "local_site"
    page = site / "validations" / "green_rows" / "run" / "page.html"
    page.parent.mkdir(parents=True)
    (site / "static" / "styles").mkdir(parents=True)
    (site / "static" / "styles" / "gx.css").write_text(
        ".logo{background:url('https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/full_logo_dark.png')}"
    )
    page.write_text(
        '<script src="https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js" integrity="sha384-x" '
        'crossorigin="anonymous"></script><link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/vega@5">'
        '<a href="https://greatexpectations.io">a link a reader clicks stays</a>'
    )
    assert offline.make_offline(site) == 2 and offline.make_offline(site) == 0  # idempotent
    text = page.read_text()
    assert '<script src="../../../static/vendor/bootstrap@4.3.1/dist/js/bootstrap.min.js"></script>' in text
    assert "../../../static/vendor/vega@5.33.1/build/vega.min.js" in text and "integrity" not in text
    assert 'href="https://greatexpectations.io"' in text
    assert "url('../images/logo-long.png')" in (site / "static" / "styles" / "gx.css").read_text()
    assert (site / "static" / "vendor" / "jquery@3.7.1" / "dist" / "jquery.min.js").is_file()
    page.write_text('<script src="https://cdn.example.com/new-lib.js"></script>')  # a GX upgrade's new CDN link
    with pytest.raises(offline.OnlineAssetError, match="new-lib.js"):
        offline.make_offline(site)


def _run(service, month, started, verdict="passed", failures=None, total=1000):
    failures = failures or {}
    failing = sum(failures.values())
    return {
        "run_id": f"r-{service}-{month}-{started}",
        "service": service,
        "month": month,
        "started_at": started,
        "verdict": verdict,
        "reason": None if verdict == "passed" else "columns_present: missing fare_amount",
        "rows_total": total,
        "rows_valid": total - failing if verdict == "passed" else 0,
        "rows_quarantined": failing if verdict == "passed" else 0,
        "failed_share": failing / total,
        "rule_failures": failures,
    }


def test_the_overview_puts_months_side_by_side_with_rule_changes_and_links(tmp_path):
    from jobs.validation import overview as validation_overview

    runs = [
        _run("green", "2023-01", 1, failures={"duration_max": 5, "pickup_in_month": 2}),
        _run("green", "2023-02", 2, verdict="rejected", failures={"duration_max": 400}),
        _run("green", "2023-02", 3, failures={"duration_max": 9}),  # re-landed: the latest run counts
        _run("yellow", "2019-03", 1, failures={"pickup_in_month": 4}),
    ]
    rows = validation_overview.latest_runs(runs)
    assert [(r["service"], r["month"], r["started_at"]) for r in rows] == [
        ("green", "2023-01", 1),
        ("green", "2023-02", 3),
        ("yellow", "2019-03", 1),
    ]
    changes = validation_overview.rule_changes(rows)
    assert changes[("green", "2023-02")] == {"duration_max": (9, 4), "pickup_in_month": (0, -2)}
    assert changes[("green", "2023-01")]["duration_max"] == (5, None)  # no previous month
    site = tmp_path / "gx" / "uncommitted" / "data_docs" / "local_site"
    docs = site / "validations" / "green_rows" / "green-2023-02-r-green-2023-02-3" / "t" / "spark-green_rows.html"
    docs.parent.mkdir(parents=True)
    docs.write_text("<html></html>")
    page = validation_overview.write(runs, tmp_path / "index.html", site)
    text = page.read_text()
    assert "href='gx/uncommitted/data_docs/local_site/validations/green_rows/green-2023-02-r-green-2023-02-3/" in text
    assert text.count("<tr class='passed'>") == 3 and "(+4)" in text and "<img alt='yellow trend'" in text
    assert offline.remote_loads(text) == []


@pytest.mark.slow
def test_every_report_renders_offline_in_chromium(golden, tmp_path):
    """Data Docs index (its table exists only if bootstrap-table ran), a validation-result page, the drift report and
    the bake-off with the network off: styled by Bootstrap (a computed style), no network load attempted, and no page or
    stylesheet under reports/ that loads anything from the network."""
    reports = golden.settings.reports_dir
    site = reports / "validation/gx/uncommitted/data_docs/local_site"
    index = chromium_probe(site / "index.html", tmp_path)
    runs = len(list((site / "validations").rglob("*.html")))
    assert runs >= 8 and index["table_rows"] >= runs, index  # 4 months x (file + rows suite), filled in by JS
    assert "Times" not in index["body_font"] and "apple-system" in index["body_font"], index["body_font"]
    result = chromium_probe(next((site / "validations" / "green_rows").rglob("*.html")), tmp_path)
    assert result["tables"] > 1 and "apple-system" in result["body_font"] and "Expectation" in result["text"]
    overview = chromium_probe(reports / "validation" / "index.html", tmp_path)
    assert overview["tables"] == 1 and "2023-02" in overview["text"] and "passed" in overview["text"]
    drift = chromium_probe(next((reports / "drift" / "green").glob("*.html")), tmp_path)
    assert drift["tables"] > 1 and "PSI" in drift["text"]
    bakeoff = chromium_probe(next((reports / "bakeoff" / "green").glob("*.html")), tmp_path)
    assert bakeoff["tables"] >= 4 and "baseline-zone-pair-median" in bakeoff["text"], bakeoff
    for probe in (index, result, overview, drift, bakeoff):
        assert probe["remote"] == [], probe["remote"]
    leftovers = {
        str(p): offline.remote_loads(p.read_text(errors="ignore"))
        for p in [*reports.rglob("*.html"), *reports.rglob("*.css")]
    }
    assert {p: r for p, r in leftovers.items() if r} == {}
