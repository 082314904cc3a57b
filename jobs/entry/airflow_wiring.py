"""Shared wiring for the DAGs in ``dags/``: how a task runs one `taxi` job through spark-submit, waits for a month's
publication, announces a new month to training, and reads the monitor's retraining decision.

Only standard-library and Airflow imports at module level (no Spark, no pandas, no MLflow): DAG files are parsed
often and must stay light; task callables import what they need when they run. It lives in the installed package
so every Airflow component can import it, whatever its sys.path.
Deployment knobs: the `airflow` section of the configuration (start and end month, catch-up, the Spark pool, the
publication wait), read when the DAG files are parsed; the `spark_default` connection (AIRFLOW_CONN_SPARK_DEFAULT,
e.g. `spark://local%5B2%5D` or `spark://spark-master:7077`); the variables `taxi_jars` (comma-separated Delta and
SynapseML JARs: the output of `taxi jars`), `taxi_driver_java_options` (the output of `taxi class-archive`: the
drivers map the archived classes), `taxi_py_files` (the zipped `jobs` package, for clusters) and `taxi_python` (the
interpreter of the drivers and executors; default: the one running Airflow, never `python3` from PATH).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import Asset, task
from airflow.sdk.exceptions import AirflowSkipException

from jobs.platform.config import SERVICES as SERVICES  # the DAG files loop over them
from jobs.platform.config import load_settings

ENTRYPOINT = str(Path(__file__).resolve().with_name("submit.py"))
# spark-submit would start `python3` from the worker's PATH, which need not have the project installed.
PYTHON = "{{ var.value.get('taxi_python', '" + sys.executable + "') }}"
SETTINGS = load_settings().airflow
# A monthly run stands for its data interval, [1st of month M, 1st of M+1): the run created when M ends
# processes M (a backfill with --from-date 2022-01-01 processes 2022-01 first).
MONTH = "{{ data_interval_start.strftime('%Y-%m') }}"
MONTHLY_START = datetime.combine(SETTINGS.start_date, datetime.min.time())
MONTHLY_END = datetime.combine(SETTINGS.end_date, datetime.min.time()) if SETTINGS.end_date else None

DEFAULT_ARGS = {
    "owner": "taxi",
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=30),
    "execution_timeout": timedelta(hours=1),
}


def features_asset(service: str) -> Asset:
    """Updated once per new month (by the monthly DAG's announce_new_month): what training is scheduled on."""
    return Asset(f"lakehouse://silver/features/{service}")


def predictions_asset(service: str) -> Asset:
    """Updated whenever a month is scored: what monitoring is scheduled on."""
    return Asset(f"lakehouse://gold/predictions/{service}")


def taxi_job(task_id: str, *args: str, timeout: timedelta | None = None, **kwargs) -> SparkSubmitOperator:
    """A task that runs `taxi <args>` with spark-submit on the `spark_default` connection, in the Spark pool."""
    return SparkSubmitOperator(
        task_id=task_id,
        application=ENTRYPOINT,
        application_args=list(args),
        conn_id="spark_default",
        name=f"taxi-{task_id}",
        jars="{{ var.value.get('taxi_jars', '') }}",
        py_files="{{ var.value.get('taxi_py_files', '') }}",
        # The driver maps the classes `taxi class-archive` archived (empty: it loads them as usual).
        conf={
            "spark.dynamicAllocation.enabled": "false",
            "spark.driver.defaultJavaOptions": "{{ var.value.get('taxi_driver_java_options', '') }}",
            "spark.pyspark.python": PYTHON,
            "spark.pyspark.driver.python": PYTHON,
        },
        execution_timeout=timeout or DEFAULT_ARGS["execution_timeout"],
        pool=SETTINGS.spark_pool,
        **kwargs,
    )


# One check is a HEAD request (30 s at most) and a config read: an attempt that runs longer has hung, and is
# killed and retried instead of holding the month's run for the hour other tasks get.
PUBLICATION_CHECK_TIMEOUT = timedelta(minutes=5)


def wait_for_publication(service: str):
    """The monthly run's first task: succeeds once the month's source is out; between checks the task is
    `up_for_reschedule` and holds no worker slot. Fails, naming the source, once the wait has run out.

    A plain task that reschedules itself rather than a reschedule-mode sensor: Airflow 3.3's BaseSensorOperator asks
    the supervisor for the first reschedule date before every poke after the first, and that request can hang until
    the task is killed (apache/airflow#68010). The deadline is the check's own (publication_timeout_days from the
    month's end), so the sensor's run-time bookkeeping is not needed."""

    @task(
        task_id="wait_for_publication",
        retries=2,
        retry_delay=timedelta(minutes=1),
        retry_exponential_backoff=False,
        execution_timeout=PUBLICATION_CHECK_TIMEOUT,
    )
    def wait(month: str) -> str:
        from airflow.sdk.exceptions import AirflowFailException, AirflowRescheduleException

        from jobs.ingest import publication
        from jobs.platform.config import load_settings

        settings = load_settings()
        try:
            status = publication.check(settings, service, month)
        except publication.NotPublished as e:
            raise AirflowFailException(str(e)) from e  # the wait ran out: final, not retried
        print(status.message())
        if not status.published:
            poke = timedelta(seconds=settings.airflow.publication_poke_s)
            raise AirflowRescheduleException(datetime.now(UTC) + poke)
        return status.source

    return wait(MONTH)


def announce_skip_reason(service: str, month: str, run_type: str, announced: list[str]) -> str | None:
    """Why this run must not start a training (None: it announces a new month)."""
    if run_type == "backfill":
        return f"{month}: a backfill run; trigger taxi_training_{service} once the backfill is done"
    if announced and max(announced) >= month:
        return f"{month}: not newer than the last announced month {max(announced)} (a rerun starts no training)"
    return None


def announce_new_month(service: str):
    """Updates the features asset (so training runs) only for a month newer than every month announced before, and
    never from a backfill: a rerun of an old month or a backfill of history starts no training."""
    asset = features_asset(service)

    @task(task_id="announce_new_month", inlets=[asset], outlets=[asset])
    def announce(month: str, *, dag_run=None, inlet_events=None, outlet_events=None) -> str:
        announced = [e.extra.get("month") for e in inlet_events[asset] if e.extra and e.extra.get("month")]
        reason = announce_skip_reason(service, month, getattr(dag_run.run_type, "value", dag_run.run_type), announced)
        if reason:
            raise AirflowSkipException(reason)
        outlet_events[asset].extra = {"month": month}
        return month

    return announce(MONTH)


def retrain_needed(service: str):
    """Branch after `taxi monitor --pending`: read the reports this run wrote from the Delta drift table (shared
    storage, whichever worker ran the monitor) and trigger training when any of them asks for it."""

    @task.branch(task_id="retrain_needed")
    def branch(*, dag_run=None) -> str:
        from jobs.monitoring.decisions import weeks_asking_for_retraining
        from jobs.platform.config import load_settings

        weeks = weeks_asking_for_retraining(load_settings(), service, since=dag_run.start_date)
        print(f"weeks asking for retraining: {', '.join(weeks) or 'none'}")
        return "trigger_retraining" if weeks else "no_retraining"

    return branch()
