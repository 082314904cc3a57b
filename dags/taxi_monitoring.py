"""Weekly monitoring per service: drift and accuracy of the champion; retraining when the verdict asks for it.

The monitor job writes <lakehouse>/reports/drift/<service>/<week>.json; the branch reads its `retrain` flag and
either triggers taxi_training_<service> or ends.
"""

from __future__ import annotations

from datetime import datetime

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, task

from jobs.airflow_wiring import DEFAULT_ARGS, ISO_WEEK, SERVICES, taxi_job

for service in SERVICES:
    with DAG(
        dag_id=f"taxi_monitoring_{service}",
        description=f"{service} taxi: weekly drift report; retrain on drift or error",
        schedule="0 6 * * 1",  # Mondays: the ISO week that just ended
        start_date=datetime(2022, 1, 3),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=["taxi", service, "monitoring"],
        doc_md=__doc__,
    ) as dag:
        monitor = taxi_job("monitor", "monitor", "--service", service, "--week", ISO_WEEK)

        @task.branch(task_id="retrain_needed")
        def retrain_needed(service: str, week: str) -> str:
            import json

            from jobs.config import load_settings  # runtime import: not at parse time

            flag = load_settings().reports_dir / "drift" / service / f"{week}.json"
            return "trigger_retraining" if json.loads(flag.read_text())["retrain"] else "no_retraining"

        trigger = TriggerDagRunOperator(
            task_id="trigger_retraining",
            trigger_dag_id=f"taxi_training_{service}",
            conf={"until": "latest"},
        )
        monitor >> retrain_needed(service, ISO_WEEK) >> [trigger, EmptyOperator(task_id="no_retraining")]
    globals()[dag.dag_id] = dag
