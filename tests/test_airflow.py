"""Orchestration: the DAGs parse light and are wired as documented; a real `airflow dags test` of monitoring on an
empty lakehouse. The monthly DAG runs for real in test_cluster.py (`dags test` on a Spark cluster) and in
test_airflow_scheduler.py (under the scheduler: live calendar and backfill)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from .conftest import ROOT
from .processes import airflow_cli, airflow_env, airflow_init, airflow_task_states

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


def _run_created_on(dag, day: str) -> dict:
    """The template context of the run the DAG's own timetable creates on ``day`` (a real DagRunInfo)."""
    import pendulum
    from airflow.sdk import macros
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import DataInterval, TimeRestriction

    created = pendulum.parse(day)
    timetable = coerce_to_core_timetable(dag.timetable)
    previous = DataInterval(created.subtract(months=2), created.subtract(months=1))
    unbounded = TimeRestriction(earliest=None, latest=None, catchup=True)
    info = timetable.next_dagrun_info(last_automated_data_interval=previous, restriction=unbounded)
    assert info.run_after == created
    interval = info.data_interval
    return {
        "data_interval_start": interval.start,
        "data_interval_end": interval.end,
        "logical_date": interval.start,
        "run_after": info.run_after,
        "macros": macros,
        "dag_run": type("DagRun", (), {"conf": {}})(),
        "var": {"value": {}},
    }


def _render(task, context: dict, conf: dict | None = None) -> list[str]:
    """The task's arguments (spark-submit's, or a decorated task's) rendered with the Jinja environment of its DAG."""
    if conf is not None:
        context = {**context, "dag_run": type("DagRun", (), {"conf": conf})()}
    field = "application_args" if hasattr(task, "application_args") else "op_args"
    return list(task.render_template(list(getattr(task, field)), context, task.dag.get_template_env()))


def test_monthly_dag_runs_a_month_once_it_has_ended_and_waits_for_its_file(dagbag):
    dag = dagbag.dags["taxi_monthly_green"]
    assert dag.catchup is True and dag.max_active_runs == 1
    assert dag.start_date.strftime("%Y-%m-%d") == "2022-01-01" and dag.end_date is None  # conf/local.yaml airflow:
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable" and dag.timetable.expression == "0 0 1 * *"
    chain = {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks}
    assert chain == {
        "wait_for_publication": ["ingest"],
        "ingest": ["validate"],
        "validate": ["features"],
        "features": ["announce_new_month", "score"],
        "score": [],
        "announce_new_month": [],
    }
    spark_tasks = [t for t in dag.tasks if hasattr(t, "application")]
    assert [t.task_id for t in spark_tasks] == ["ingest", "validate", "features", "score"]
    for t in spark_tasks:
        assert t.retries == (0 if t.task_id == "validate" else 2)  # a rejected month is final, not retried
        assert t.retry_exponential_backoff and t.execution_timeout == timedelta(hours=1)
        assert t._conn_id == "spark_default" and t.application.endswith("jobs/entry/submit.py")
        assert t.pool == "taxi_spark"  # a backfill queues for the pool instead of starting more Spark drivers
        # Driver and executors run the interpreter running Airflow, not `python3` from the worker's PATH.
        assert t.conf["spark.pyspark.python"] == t.conf["spark.pyspark.driver.python"]
        assert t.conf["spark.pyspark.python"] == "{{ var.value.get('taxi_python', '" + sys.executable + "') }}"
    # The run created on 2023-04-01 (when March ended) processes March, in every task.
    run = _run_created_on(dag, "2023-04-01")
    assert _render(dag.get_task("wait_for_publication"), run) == ["2023-03"]
    assert _render(dag.get_task("ingest"), run) == ["ingest", "--service", "green", "--month", "2023-03"]
    assert _render(dag.get_task("score"), run) == [
        "score",
        "--service",
        "green",
        "--month",
        "2023-03",
        "--skip-if-no-model",
    ]
    assert _render(dag.get_task("announce_new_month"), run) == ["2023-03"]
    wait = dag.get_task("wait_for_publication")
    assert wait.retries == 2 and wait.execution_timeout == timedelta(minutes=5)  # a hung check is killed, retried
    assert [t.task_id for t in dag.tasks if t.depends_on_past] == ["features"]  # months' features in order
    assert [o.uri for o in dag.get_task("announce_new_month").outlets] == ["lakehouse://silver/features/green"]
    assert [o.uri for o in dag.get_task("score").outlets] == ["lakehouse://gold/predictions/green"]
    assert dag.get_task("features").outlets == []  # a rerun of features alone announces nothing


def test_the_wait_reschedules_itself_until_the_file_is_out_and_fails_for_good_once_the_wait_ran_out(
    dagbag, tmp_path, monkeypatch
):
    from airflow.sdk.exceptions import AirflowFailException, AirflowRescheduleException

    from jobs.platform.months import add_months

    site = tmp_path / "site"
    (tmp_path / "no-samples").mkdir()
    monkeypatch.setenv("TAXI__DATA__SOURCE_URL_TEMPLATE", str(site / "{service}_tripdata_{month}.parquet"))
    monkeypatch.setenv("TAXI__DATA__SAMPLE_DIR", str(tmp_path / "no-samples"))
    monkeypatch.setenv("TAXI__AIRFLOW__PUBLICATION_POKE_S", "600")
    check = dagbag.dags["taxi_monthly_green"].get_task("wait_for_publication").python_callable
    last_month = add_months(datetime.now(UTC).strftime("%Y-%m"), -1)
    before = datetime.now(UTC)
    with pytest.raises(AirflowRescheduleException) as later:  # not out yet: up_for_reschedule, no slot held
        check(last_month)
    assert before + timedelta(seconds=600) <= later.value.reschedule_date <= datetime.now(UTC) + timedelta(seconds=600)
    with pytest.raises(AirflowFailException, match="2020-01.*green_tripdata_2020-01.parquet.*publication_timeout"):
        check("2020-01")  # the wait ran out: final (no retry), the source named
    site.mkdir()
    (site / f"green_tripdata_{last_month}.parquet").write_bytes(b"PAR1")
    assert check(last_month) == str(site / f"green_tripdata_{last_month}.parquet")  # out: the run goes on


def test_training_runs_on_announced_months_and_monitoring_on_scored_ones(dagbag):
    train = dagbag.dags["taxi_training_green"]
    assert [a.uri for a in train.timetable.asset_condition.objects] == ["lakehouse://silver/features/green"]
    task = train.get_task("train")
    assert task.execution_timeout == timedelta(hours=3) and task.pool == "taxi_spark"
    run = _run_created_on(dagbag.dags["taxi_monthly_green"], "2023-04-01")
    assert _render(task, run) == ["train", "--service", "green", "--until", "latest"]
    assert _render(task, run, {"until": "2023-02"})[-1] == "2023-02"  # a manual trigger's conf
    mon = dagbag.dags["taxi_monitoring_green"]
    assert [a.uri for a in mon.timetable.asset_condition.objects] == ["lakehouse://gold/predictions/green"]
    assert _render(mon.get_task("monitor"), run) == ["monitor", "--service", "green", "--pending"]
    assert mon.get_task("monitor").pool == "taxi_spark"
    assert sorted(mon.get_task("retrain_needed").downstream_task_ids) == ["no_retraining", "trigger_retraining"]
    trigger = mon.get_task("trigger_retraining")
    assert trigger.trigger_dag_id == "taxi_training_green" and trigger.conf == {"until": "latest"}


def test_only_a_new_month_outside_a_backfill_starts_a_training():
    from jobs.entry.airflow_wiring import announce_skip_reason

    assert announce_skip_reason("green", "2023-03", "scheduled", ["2023-01", "2023-02"]) is None
    assert announce_skip_reason("green", "2023-01", "scheduled", []) is None  # the first month ever
    assert "not newer than the last announced month 2023-02" in announce_skip_reason(
        "green", "2023-01", "scheduled", ["2023-01", "2023-02"]
    )
    assert "not newer" in announce_skip_reason("green", "2023-02", "manual", ["2023-02"])  # a rerun of that month
    assert "backfill" in announce_skip_reason("green", "2024-01", "backfill", ["2023-02"])


@pytest.mark.slow
def test_a_new_deployment_gets_its_spark_pool_and_monitors_an_empty_lakehouse_with_nothing_to_do(tmp_path):
    """`taxi airflow-init` creates the Spark pool with the configured slots. Nothing scored and no champion yet: the
    monitoring DAG says so and ends green, it does not fail or retry."""
    env = {**airflow_env(tmp_path, tmp_path / "lakehouse"), "TAXI__AIRFLOW__SPARK_POOL_SLOTS": "3"}
    assert json.loads(airflow_init(env))["slots"] == 3
    pools = json.loads(airflow_cli(env, "pools", "get", "taxi_spark", "--output", "json").stdout)
    assert [(p["pool"], int(p["slots"])) for p in pools] == [("taxi_spark", 3)]
    run = airflow_cli(env, "dags", "test", "taxi_monitoring_green", "2023-03-13", timeout=600, check=False)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert "nothing to monitor" in log
    assert airflow_task_states(env, "taxi_monitoring_green") == {
        "monitor": "success",
        "retrain_needed": "success",
        "no_retraining": "success",
        "trigger_retraining": "skipped",
    }
