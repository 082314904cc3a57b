"""`taxi backtest`: the policies' arithmetic and the monitor judged against reality at their boundaries (unit), and
three months replayed from an empty lakehouse through the real jobs (slow): shared trainings, a missing month
reported, the real run's numbers equal to the lakehouse's, and a rerun that changes nothing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from jobs.backtest.command import policy_list
from jobs.backtest.policies import PolicyState, Sums, Training, WeekFacts, is_degraded, judge_monitor
from jobs.platform.config import BacktestConfig

from .conftest import ROOT, table_version
from .processes import chromium_probe

RATIO, SHARE = 1.25, 0.1


def week(name: str, verdict: str, rmse, reference=4.0, freshest=None) -> WeekFacts:
    return WeekFacts(name, verdict, rmse, reference, freshest)


@pytest.mark.unit
def test_a_week_is_degraded_only_strictly_past_either_limit():
    assert not is_degraded(week("w", "ok", 5.0), RATIO, SHARE)  # exactly 1.25 x 4.0
    assert is_degraded(week("w", "ok", 5.0001), RATIO, SHARE)
    assert not is_degraded(week("w", "ok", 4.4, freshest=4.0), RATIO, SHARE)  # exactly 1.1 x the freshest
    assert is_degraded(week("w", "ok", 4.4001, freshest=4.0), RATIO, SHARE)
    assert not is_degraded(week("w", "ok", None, freshest=1.0), RATIO, SHARE)  # no known duration: not judged
    assert not is_degraded(week("w", "ok", 9.0, reference=None), RATIO, SHARE)  # no limit to exceed


@pytest.mark.unit
def test_hits_false_alarms_and_misses_are_counted_per_alarm_kind():
    weeks = [
        week("2023-W01", "drift", 6.0),  # degraded, drift alarm: a drift hit, an accuracy miss
        week("2023-W02", "drift", 4.0),  # normal, drift alarm: a drift false alarm
        week("2023-W03", "error", 5.5),  # degraded, accuracy alarm: an accuracy hit, a drift miss
        week("2023-W04", "error", 4.0),  # normal (a coverage breach, say): an accuracy false alarm
        week("2023-W05", "ok", 4.5, freshest=4.0),  # degraded against the freshest model: missed by both
        week("2023-W06", "ok", 4.0),  # normal, quiet
        week("2023-W07", "in_sample", 9.0),  # no verdict: not judged at all
    ]
    out = judge_monitor(weeks, RATIO, SHARE)
    assert out["weeks"] == 6 and out["degraded"] == 3
    assert out["alarms"] == {"drift": 2, "accuracy": 2}
    assert out["hits"] == {"drift": 1, "accuracy": 1}
    assert out["false_alarms"] == {"drift": 1, "accuracy": 1}
    assert out["misses"] == {"drift": 2, "accuracy": 2}
    assert judge_monitor([], RATIO, SHARE)["misses"] == {"drift": 0, "accuracy": 0}


@pytest.mark.unit
def test_each_policy_takes_the_shared_training_as_it_says():
    promoted, rejected = Training("2023-01", 2, True, "won", 60.0), Training("2023-02", 3, False, "lost", 90.0)
    states = {name: PolicyState(name, 1) for name in ("monthly", "frozen", "drift", "always")}
    for training, flagged in ((promoted, False), (rejected, True)):
        for state in states.values():
            state.after_month(training, flagged)
    assert [states[p].version for p in states] == [2, 1, 3, 3]
    assert [len(states[p].trainings) for p in states] == [2, 0, 1, 2]  # monthly pays for the gate's rejects too
    assert [len(states[p].promotions) for p in states] == [1, 0, 1, 2]
    assert states["drift"].promotions[0]["month"] == "2023-02"
    for state in states.values():
        state.after_month(None, True)  # a month without a training (missing, rejected) changes nothing
    assert [states[p].version for p in states] == [2, 1, 3, 3]


@pytest.mark.unit
def test_error_sums_add_across_the_months_a_week_spans():
    january, february = Sums(2, 8.0, 4.0, 2, 1, 3), Sums(2, 0.0, 0.0, 0, 0, 2)
    assert (january + february).metrics() == {"rmse": 1.4142, "mae": 1.0, "coverage": 0.5}
    assert Sums().metrics() == {"rmse": None, "mae": None, "coverage": None}


@pytest.mark.unit
def test_policies_are_checked_where_they_are_named():
    assert policy_list("frozen,drift") == ["monthly", "frozen", "drift"]  # the real run always runs
    with pytest.raises(argparse.ArgumentTypeError, match="unknown policy sometimes"):
        policy_list("frozen,sometimes")
    with pytest.raises(ValueError, match="must include monthly"):
        BacktestConfig(policies=["frozen"])


@pytest.mark.slow
def test_three_months_replayed_from_an_empty_lakehouse(spark, empty_lake, tmp_path):
    """2022-01 and 2022-02 are history (the first champion trains on them), 2023-01 and 2023-02 are replayed with
    a training after each, 2023-03 is not in the folder: reported, not fatal."""
    from pyspark.sql import functions as F

    from jobs.backtest import job
    from jobs.models import registry
    from jobs.platform import lakehouse
    from jobs.platform.tracking import setup_mlflow

    s = empty_lake
    summary = job.run(spark, s, "green", "2023-01", "2023-03", ROOT / "data" / "tlc" / "green")
    result = json.loads(open(summary["json"]).read())
    assert {m["month"]: m["status"] for m in result["months"]} == {
        "2023-01": "scored",
        "2023-02": "scored",
        "2023-03": "missing",
    }
    assert "green_tripdata_2023-03.parquet" in result["months"][2]["detail"]
    assert set(result) >= {"service", "from", "to", "months", "policies", "monitor"}
    assert set(result["policies"]) == {"monthly", "frozen", "drift", "always"}

    # Shared trainings: the first champion and one training per replayed month, whatever the four policies asked.
    setup_mlflow(s)
    versions = registry.versions(s, "green")
    tags = ("valid_month", "trained_through", "train_months", "gate")
    assert len(versions) == 3, [(v.version, {k: v.tags.get(k) for k in tags}) for v in versions]
    assert result["policies"]["always"]["trainings"] == result["policies"]["monthly"]["trainings"] == 2
    assert result["policies"]["frozen"]["trainings"] == 0
    used = {p["champion_version"] for m in result["months"] for p in m["policies"].values()}
    assert used <= {int(v.version) for v in versions}

    # The real run's numbers are the lakehouse's.
    scored = lakehouse.read(spark, s, lakehouse.PREDICTIONS).where("in_training_range")
    for m in result["months"][:2]:
        rows = scored.where(F.col("month") == m["month"])
        err = F.col("predicted_duration_min") - F.col("actual_duration_min")
        rmse = rows.agg(F.sqrt(F.avg(err * err))).first()[0]
        assert m["policies"]["monthly"]["rmse"] == pytest.approx(rmse, abs=1e-4)
        assert {r.model_version for r in rows.select("model_version").distinct().collect()} == {
            m["policies"]["monthly"]["champion_version"]
        }
    assert all(m["policies"]["frozen"]["champion_version"] == 1 for m in result["months"][:2])

    # The monitor's counts add up; the weeks judged are the complete weeks of the scored months.
    mon = result["monitor"]
    for kind in ("drift", "accuracy"):
        assert mon["hits"][kind] + mon["false_alarms"][kind] == mon["alarms"][kind]
        assert mon["hits"][kind] + mon["misses"][kind] == mon["degraded"]
    assert [w["week"] for w in result["weeks"]] == [f"2023-W{n:02d}" for n in range(1, 9)]

    # Outputs: the Delta table, an offline page, the MLflow run with both files.
    table = lakehouse.read(spark, s, lakehouse.BACKTEST)
    assert table.where("month = '2023-02' and policy = 'drift' and metric = 'rmse'").first().value == pytest.approx(
        result["months"][1]["policies"]["drift"]["rmse"]
    )
    probe = chromium_probe(Path(summary["html"]), tmp_path)  # network off: nothing to load, everything rendered
    assert probe["remote"] == [] and probe["tables"] == 5, probe
    assert "The monitor against reality" in probe["text"] and "2023-W08" in probe["text"]
    artifacts = {a.path for a in registry.client().list_artifacts(summary["mlflow_run_id"], "backtest")}
    assert artifacts == {"backtest/2023-01_2023-03.json", "backtest/2023-01_2023-03.html"}

    # A rerun changes nothing: no landing, scoring, report or registration, and the same numbers.
    before = {t.key: table_version(s, t) for t in (lakehouse.FEATURES, lakehouse.PREDICTIONS, lakehouse.DRIFT)}
    again = job.run(spark, s, "green", "2023-01", "2023-03", ROOT / "data" / "tlc" / "green")
    assert json.loads(open(again["json"]).read()) == result
    assert {t.key: table_version(s, t) for t in (lakehouse.FEATURES, lakehouse.PREDICTIONS, lakehouse.DRIFT)} == before
    assert len(registry.versions(s, "green")) == 3


@pytest.mark.unit
def test_a_registry_of_many_versions_reads_back_in_order_with_the_newest_training_per_month(tmp_path):
    """A year of monthly trainings and reruns: 30 versions on a real MLflow store (sqlite), listed oldest first with
    their tags; the backtest takes the newest version validated on each month, with its training run's wall time."""
    from jobs.backtest.job import registered_trainings
    from jobs.models import registry
    from jobs.platform.tracking import setup_mlflow

    from .conftest import settings_for

    def store(name: str):  # its own sqlite store, whatever MLflow's global URI points at
        s = settings_for(tmp_path / name)
        return s.model_copy(
            update={"mlflow": s.mlflow.model_copy(update={"tracking_uri": f"sqlite:///{s.lakehouse}.db"})}
        )

    s = store("lakehouse")
    mlflow = setup_mlflow(s)
    c, name = registry.client(), s.registered_model("green")
    c.create_registered_model(name)
    experiment = mlflow.create_experiment("registry-growth")
    for n in range(30):
        run = c.create_run(experiment, start_time=1_000_000)
        c.set_terminated(run.info.run_id, end_time=1_000_000 + 1000 * n)
        mv = c.create_model_version(name, f"file://{tmp_path}/model-{n}", run_id=run.info.run_id)
        c.set_model_version_tag(name, mv.version, "valid_month", f"2022-{n % 12 + 1:02d}")
        c.set_model_version_tag(name, mv.version, "gate", "promoted" if n % 5 == 0 else "rejected")
    versions = registry.versions(s, "green")
    assert [int(v.version) for v in versions] == list(range(1, 31))
    assert versions[-1].tags["valid_month"] == "2022-06"
    found = registered_trainings(s, "green", "2022-01", "2022-12")
    assert sorted(found) == [f"2022-{m:02d}" for m in range(1, 13)]
    assert found["2022-01"].version == 25 and found["2022-01"].seconds == 24.0  # versions 1, 13, 25: the newest
    assert found["2022-09"].promoted and not found["2022-01"].promoted  # versions 21 (promoted) and 25 (not)
    other = store("other")
    setup_mlflow(other)
    assert registry.versions(other, "green") == []  # no model yet: nothing, no error


@pytest.mark.unit
def test_a_source_folder_outside_the_allowed_roots_or_missing_is_refused_naming_it(tmp_path):
    from jobs.ingest.job import check_source_dir
    from jobs.platform.errors import InputError

    from .conftest import settings_for

    s = settings_for(tmp_path / "lakehouse")
    with pytest.raises(InputError, match="backtest green: folder /etc is outside the allowed roots"):
        check_source_dir(s, "/etc", "backtest green")
    with pytest.raises(InputError, match="source folder not found: .*no-such-folder"):
        check_source_dir(s, tmp_path / "no-such-folder", "backtest green")
    assert check_source_dir(s, ROOT / "data" / "tlc" / "green", "backtest green") == ROOT / "data" / "tlc" / "green"
