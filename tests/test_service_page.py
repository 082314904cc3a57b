"""The page a user bookmarks, one per service: written by the golden lakehouse's monitor runs, every link on it
resolving to a page that exists, the facts from the tables and the registry, and rendered offline in Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jobs.monitoring import service_page
from jobs.monitoring.service_page import ServiceFacts

from .conftest import GOLDEN_GREEN, GOLDEN_WEEKS
from .processes import chromium_probe

DEFAULT_TIER = "integration"  # tests without a tier marker of their own


def _page(golden) -> Path:
    return Path(service_page.page_path(golden.settings, "green"))


def test_the_monitor_runs_left_a_page_whose_links_all_resolve(golden):
    page = _page(golden)
    text = page.read_text()
    hrefs = re.findall(r"href='([^']+)'", text)
    missing = [h for h in hrefs if not (page.parent / h).resolve().exists()]
    assert hrefs and missing == []
    for week in GOLDEN_WEEKS:  # each week's report, linked from its row and the list of pages
        assert text.count(f"href='../drift/green/{week}.html'") == 2
    months = re.findall(r"<td class='l'><a href='([^']+)'>(\d{4}-\d{2})</a></td><td class='passed'>passed", text)
    assert sorted(m for _, m in months) == sorted(GOLDEN_GREEN)  # every month landed, with its Data Docs page
    assert all("data_docs" in href and href.endswith(".html") for href, _ in months)
    champion = golden.summaries["train"]["champion_version"]
    assert f"champion: version {champion}" in text and "3 weeks reported · 0 alarms" in text
    assert len(re.findall(r"href='\.\./bakeoff/green/[^']+\.html'", text)) == 1
    assert "Backtests</h3><p>none yet" in text


@pytest.mark.unit
def test_weeks_take_the_accuracy_of_the_version_that_scored_them_and_alarms_are_counted():
    drift = [
        {"week": "2023-W06", "verdict": "ok", "retrain": False, "model_version": 2},
        {"week": "2023-W07", "verdict": "drift", "retrain": True, "model_version": 2},
    ]
    accuracy = [
        {"window": "2023-W06", "model_version": 2, "n": 10, "rmse": 4.0, "coverage": 0.8},
        {"window": "2023-W06", "model_version": 3, "n": 10, "rmse": 3.0, "coverage": 0.7},  # the shadow
    ]
    weeks = service_page.weekly_facts(drift, accuracy)
    assert [(w["week"], w["rmse"], w["verdict"]) for w in weeks] == [
        ("2023-W06", 4.0, "ok"),
        ("2023-W07", None, "drift"),
    ]
    facts = ServiceFacts(
        "green",
        weeks=weeks,
        drift={("trip_distance", "2023-W07"): {"metric": "psi", "value": 0.31, "threshold": 0.2, "drifted": True}},
        links={"Backtests": []},
    )
    text = service_page.render(facts)
    assert "2 weeks reported · 1 alarms" in text and "champion: version none" in text
    assert "<td class='drift'>0.310</td>" in text and "Backtests</h3><p>none yet" in text
    assert "No version registered yet." in text and "No month validated yet." in text


@pytest.mark.slow
def test_the_page_renders_offline_in_chromium(golden, tmp_path):
    probe = chromium_probe(_page(golden), tmp_path)
    assert probe["remote"] == [] and probe["tables"] == 4, probe
    for heading in ("Accuracy per week", "Drift per judged feature", "Champion history", "Months landed"):
        assert heading in probe["text"]
