"""Shared wiring for the DAGs in ``dags/``: how a task runs one `taxi` job through spark-submit.

Only standard-library and Airflow imports here (no Spark, no pandas): DAG files are parsed often and must stay
light. It lives in the installed package so every Airflow component can import it, whatever its sys.path.
Deployment knobs come from Airflow itself: the `spark_default` connection (AIRFLOW_CONN_SPARK_DEFAULT, e.g.
`spark://local%5B2%5D` or `spark://spark-master:7077`), and the variables `taxi_jars` (comma-separated Delta and
SynapseML JARs: the output of `taxi jars`) and `taxi_py_files` (the zipped `jobs` package, for clusters).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

ENTRYPOINT = str(Path(__file__).resolve().parent / "entrypoint.py")
SERVICES = ("green", "yellow")
# Airflow 3 cron schedules are trigger timetables: a run's logical date is the moment it stands for. A monthly
# run on the 1st processes that month (backfill --from-date 2022-01-01 processes 2022-01 first); the weekly
# run on Monday reports on the ISO week that just ended.
MONTH = "{{ logical_date.strftime('%Y-%m') }}"
ISO_WEEK = "{{ (logical_date - macros.timedelta(days=7)).strftime('%G-W%V') }}"

DEFAULT_ARGS = {
    "owner": "taxi",
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=30),
    "execution_timeout": timedelta(hours=1),
}


def taxi_job(task_id: str, *args: str, timeout: timedelta | None = None, **kwargs) -> SparkSubmitOperator:
    """A task that runs `taxi <args>` with spark-submit on the `spark_default` connection."""
    return SparkSubmitOperator(
        task_id=task_id,
        application=ENTRYPOINT,
        application_args=list(args),
        conn_id="spark_default",
        name=f"taxi-{task_id}",
        jars="{{ var.value.get('taxi_jars', '') }}",
        py_files="{{ var.value.get('taxi_py_files', '') }}",
        conf={"spark.dynamicAllocation.enabled": "false"},
        execution_timeout=timeout or DEFAULT_ARGS["execution_timeout"],
        **kwargs,
    )
