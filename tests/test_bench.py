"""The bench cannot rot silently: every project name it calls still exists where it calls it, and its arithmetic and
report run on a made-up result. (The measurements themselves run in `make bench`; they take an hour.)"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import importlib.util
import types
from pathlib import Path

import pytest

from bench import measures, run

pytestmark = pytest.mark.unit

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _project_names_used(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, attribute) for every ``alias.attr`` where ``alias`` is a ``jobs`` module the file imports,
    at the top or inside a function, plus every name imported ``from jobs...``."""
    tree = ast.parse(path.read_text())
    aliases, used = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jobs"):
            for alias in node.names:
                used.append((node.lineno, node.module, alias.name))
                target = f"{node.module}.{alias.name}"
                try:
                    aliases[alias.asname or alias.name] = importlib.import_module(target).__name__
                except ImportError:
                    pass
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            used.append((node.lineno, aliases[node.value.id], node.attr))
    return used


@pytest.mark.parametrize("script", ["run.py", "measures.py"])
def test_every_project_name_the_bench_calls_exists(script):
    missing = [
        f"{script}:{line} {module}.{name}"
        for line, module, name in _project_names_used(BENCH / script)
        if not hasattr(importlib.import_module(module), name)
        and not isinstance(importlib.util.find_spec(f"{module}.{name}"), importlib.machinery.ModuleSpec)
    ]
    assert missing == []


def test_the_checker_sees_a_moved_function(tmp_path):
    """What broke `make bench` before: a function called on a job module it had moved out of."""
    script = tmp_path / "old.py"
    script.write_text("def f():\n    from jobs.training import job as train\n    return train.fit_xgboost\n")
    used = _project_names_used(script)
    assert ("jobs.training.job", "fit_xgboost") in {(m, n) for _, m, n in used}
    assert not hasattr(importlib.import_module("jobs.training.job"), "fit_xgboost")


def _result() -> dict:
    stage = {"seconds": 2.0, "peak_mib": 100, "rows_per_s": 10_000}
    scoring = {
        "score_job_seconds": 4.0,
        "spark_predict_seconds": 3.0,
        "bare_predict_seconds": 2.0,
        "score_job_rows_per_s": 5_000,
        "spark_predict_rows_per_s": 6_000,
        "bare_predict_rows_per_s": 10_000,
    }
    size = {
        "stages": {"ingest": stage, "validate": stage, "features": stage, "score": stage},
        "pipeline_seconds": 8.0,
        "validate_features_score_seconds": 6.0,
        "scoring": scoring,
        "validation_vs_plain_filter_ratio": 4.0,
        "validation_share_of_pipeline": 0.25,
    }
    return {
        "machine": {"cpus": 2, "platform": "linux", "python": "3.11"},
        "started_at": "2026-12-06T20:00:00",
        "rounds": {"xgboost": 20, "lightgbm": 20},
        "sizes": {"250000": size, "1000000": {**size, "pipeline_seconds": 16.0}},
        "training": {
            "rows": 20_000,
            "xgb_spark_seconds": 3.0,
            "xgb_single_seconds": 2.0,
            "lgbm_spark_seconds": 2.5,
            "lgbm_single_seconds": 2.0,
        },
        "tuning": {"xgboost_parallel_2_vs_1_time_ratio": 0.9},
    }


def test_headline_ratios_and_the_report_from_a_result():
    result = _result()
    ratios = run.headline_ratios(result, [250_000, 1_000_000])
    assert ratios == {
        "scoring_vs_bare_predict_ratio": 0.5,
        "spark_predict_vs_bare_predict_ratio": 0.6,
        "train_xgb_spark_vs_single_ratio": 1.5,
        "train_lgbm_spark_vs_single_ratio": 1.25,
        "tuning_xgb_parallel_2_vs_1_time_ratio": 0.9,
        "tuning_lgbm_parallel_2_vs_1_time_ratio": None,
        "validation_share_of_pipeline": 0.25,
        "validation_vs_plain_filter_ratio": 4.0,
        "rows_4x_time_ratio": 2.0,
    }
    report = run.markdown({**result, **ratios})
    assert "| 1,000,000 | **pipeline** | 16.0 | | |" in report and "| 0.5 | ≥ 0.5 |" in report


def test_benchmark_months_follow_the_training_month_and_overlaps_are_counted():
    assert [measures.bench_month(i) for i in range(3)] == ["2024-02", "2024-03", "2024-04"]
    assert measures.comparison_month([250_000, 1_000_000, 3_000_000]) == "2024-04"  # the 1M month trains
    assert measures.comparison_month([250_000]) == "2024-02"
    trials = [{"start": 0, "end": 10}, {"start": 5, "end": 15}, {"start": 20, "end": 30}]
    assert measures.overlapping(trials) == 1
    assert isinstance(run.main, types.FunctionType)
