"""Monitoring per service: drift and accuracy reports for every complete, scored week; retraining when asked.

Scheduled on the predictions asset: it runs after a month is scored, not on a wall-clock guess. `taxi monitor
--pending` reports on every ISO week whose seven days are all scored and that has no report yet (a week spanning
two months waits for both); nothing pending is a success. The branch reads the reports this run wrote from the
Delta drift table and triggers taxi_training_<service> when any of them asks for retraining.
"""

from __future__ import annotations

from datetime import datetime

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG

from jobs.entry.airflow_wiring import DEFAULT_ARGS, SERVICES, predictions_asset, retrain_needed, taxi_job

for service in SERVICES:
    with DAG(
        dag_id=f"taxi_monitoring_{service}",
        description=f"{service} taxi: drift reports for complete scored weeks; retrain on drift or error",
        schedule=[predictions_asset(service)],
        start_date=datetime(2022, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=["taxi", service, "monitoring"],
        doc_md=__doc__,
    ) as dag:
        monitor = taxi_job("monitor", "monitor", "--service", service, "--pending")
        trigger = TriggerDagRunOperator(
            task_id="trigger_retraining",
            trigger_dag_id=f"taxi_training_{service}",
            conf={"until": "latest"},
        )
        monitor >> retrain_needed(service) >> [trigger, EmptyOperator(task_id="no_retraining")]
    globals()[dag.dag_id] = dag
