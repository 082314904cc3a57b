"""Shared wiring for the DAGs in ``dags/``: how a task runs one `taxi` job through spark-submit.

Only standard-library and Airflow imports here (no Spark, no pandas): DAG files are parsed often and must stay
light. It lives in the installed package so every Airflow component can import it, whatever its sys.path.
Deployment knobs come from Airflow itself: the `spark_default` connection (AIRFLOW_CONN_SPARK_DEFAULT, e.g.
`spark://local%5B2%5D` or `spark://spark-master:7077`), and the variables `taxi_jars` (comma-separated Delta and
SynapseML JARs: the output of `taxi jars`) and `taxi_py_files` (the zipped `jobs` package, for clusters).
The monthly DAGs' date range comes from the environment of the Airflow components, read at parse time:
TAXI_DAG_START_DATE (default 2022-01-01: the first shipped month), TAXI_DAG_END_DATE (default: none) and
TAXI_DAG_CATCHUP (default true). A deployment that only reprocesses history sets an end date, so that
unpausing the DAG for a backfill schedules nothing beyond what the backfill asks for.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

ENTRYPOINT = str(Path(__file__).resolve().parent / "entrypoint.py")
SERVICES = ("green", "yellow")
# Airflow 3 cron schedules are trigger timetables: a run's logical date is the moment it stands for. A monthly
# run on the 1st processes that month (backfill --from-date 2022-01-01 processes 2022-01 first); the weekly
# run on Monday reports on the ISO week that just ended.
MONTH = "{{ logical_date.strftime('%Y-%m') }}"
ISO_WEEK = "{{ (logical_date - macros.timedelta(days=7)).strftime('%G-W%V') }}"


def _env_date(name: str, default: str | None) -> datetime | None:
    value = os.environ.get(name, default)
    return datetime.strptime(value, "%Y-%m-%d") if value else None


MONTHLY_START = _env_date("TAXI_DAG_START_DATE", "2022-01-01")
MONTHLY_END = _env_date("TAXI_DAG_END_DATE", None)
MONTHLY_CATCHUP = os.environ.get("TAXI_DAG_CATCHUP", "true").strip().lower() in ("1", "true", "yes")

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
