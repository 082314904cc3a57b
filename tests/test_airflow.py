"""Orchestration: the DAGs parse light and are wired as documented; a real `airflow dags test` run."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest

from jobs import lakehouse

from .conftest import ROOT, airflow_cli, airflow_env, table_checksum

DEFAULT_TIER = "unit"  # tests without a tier marker of their own
DAGS = ROOT / "dags"


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow-home")
    os.environ.setdefault("AIRFLOW_HOME", str(home))
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "false"
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_dags_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert sorted(dagbag.dags) == [
        f"taxi_{kind}_{svc}" for kind in ("monitoring", "monthly", "training") for svc in ("green", "yellow")
    ]


def test_dag_files_do_no_heavy_imports_at_parse_time():
    code = (
        "import sys, runpy\n"
        f"for f in {sorted(str(p) for p in DAGS.glob('*.py'))!r}: runpy.run_path(f)\n"
        "heavy = [m for m in ('pyspark', 'pandas', 'xgboost', 'lightgbm', 'mlflow', 'great_expectations') "
        "if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _render(task, logical_date: str, conf: dict | None = None) -> list[str]:
    """The task's spark-submit arguments as a run with this logical date renders them."""
    import pendulum
    from airflow.sdk import macros

    context = {"logical_date": pendulum.parse(logical_date), "macros": macros,
               "dag_run": type("DagRun", (), {"conf": conf or {}})(), "var": {"value": {}}}  # fmt: skip
    return task.render_template(task.application_args, context, task.dag.get_template_env())


def test_monthly_dag_wiring(dagbag):
    dag = dagbag.dags["taxi_monthly_green"]
    assert dag.catchup is True and dag.max_active_runs == 1
    assert dag.start_date.strftime("%Y-%m-%d") == "2022-01-01" and dag.end_date is None  # TAXI_DAG_* unset
    assert dag.timetable.expression == "0 0 1 * *"  # a run on the 1st of each month
    chain = {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks}
    assert chain == {"ingest": ["validate"], "validate": ["features"], "features": ["score"], "score": []}
    for t in dag.tasks:
        assert t.retries == 2 and t.retry_exponential_backoff and t.execution_timeout == timedelta(hours=1)
        assert t._conn_id == "spark_default" and t.application.endswith("jobs/entrypoint.py")
    # A run stands for the month of its logical date (its data-interval start).
    assert _render(dag.get_task("ingest"), "2023-04-01") == ["ingest", "--service", "green", "--month", "2023-04"]
    assert _render(dag.get_task("score"), "2022-12-01") == [
        "score", "--service", "green", "--month", "2022-12", "--skip-if-no-model"]  # fmt: skip
    assert [t.task_id for t in dag.tasks if t.depends_on_past] == ["features"]  # months' features in order
    assert [o.uri for o in dag.get_task("features").outlets] == ["lakehouse://silver/features/green"]


def test_training_and_monitoring_dag_wiring(dagbag):
    train = dagbag.dags["taxi_training_green"]
    assert [a.uri for a in train.timetable.asset_condition.objects] == ["lakehouse://silver/features/green"]
    task = train.get_task("train")
    assert task.execution_timeout == timedelta(hours=3)
    assert _render(task, "2023-04-01") == ["train", "--service", "green", "--until", "latest"]
    assert _render(task, "2023-04-01", {"until": "2023-02"})[-1] == "2023-02"  # the monitor's trigger conf
    mon = dagbag.dags["taxi_monitoring_green"]
    assert mon.timetable.expression == "0 6 * * 1"
    # The Monday run of 2023-02-13 reports on the ISO week that just ended.
    assert _render(mon.get_task("monitor"), "2023-02-13T06:00:00") == [
        "monitor", "--service", "green", "--week", "2023-W06"]  # fmt: skip
    assert sorted(mon.get_task("retrain_needed").downstream_task_ids) == ["no_retraining", "trigger_retraining"]
    assert mon.get_task("trigger_retraining").trigger_dag_id == "taxi_training_green"


@pytest.mark.slow
def test_airflow_dags_test_runs_the_monthly_pipeline_and_matches_the_jobs_by_hand(golden, tmp_path):
    """`airflow dags test` runs ingest -> validate -> features -> score via spark-submit into its own lakehouse;
    bronze, validated and quarantined rows equal those the same jobs wrote when run by hand (golden lakehouse)."""
    dag_lakehouse = tmp_path / "lakehouse"
    env = airflow_env(tmp_path, dag_lakehouse)
    airflow_cli(env, "db", "migrate")
    run = airflow_cli(env, "dags", "test", "taxi_monthly_green", "2023-02-01", timeout=900, check=False)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert log.count("new_state=success") == 4  # ingest, validate, features, score
    for command in ("ingest", "validate", "features", "score"):
        assert f'{{"command": "{command}"' in log
    for table in (lakehouse.BRONZE, lakehouse.TRIPS, lakehouse.QUARANTINE):
        by_dag = table_checksum(str(dag_lakehouse / table.relpath), "green", "2023-02")
        by_hand = table_checksum(table.path(golden.settings), "green", "2023-02")
        assert by_dag == by_hand, table.relpath
    assert (dag_lakehouse / lakehouse.FEATURES.relpath / "_delta_log").is_dir()
    assert '"skipped": true' in log  # no model in the DAG's new registry: scoring says so and succeeds
