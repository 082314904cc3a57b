"""Training per service: runs when the monthly DAG has written new features, and when the monitor asks for it.

Trains on the latest feature months (or `--until` from the trigger's conf: {"until": "YYYY-MM"}); the registry
gate inside the job decides whether the new model becomes the champion.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Asset

from jobs.airflow_wiring import DEFAULT_ARGS, SERVICES, taxi_job

for service in SERVICES:
    with DAG(
        dag_id=f"taxi_training_{service}",
        description=f"{service} taxi: train XGBoost + LightGBM on Spark, gate in the MLflow registry",
        schedule=[Asset(f"lakehouse://silver/features/{service}")],
        start_date=datetime(2022, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=["taxi", service, "training"],
        doc_md=__doc__,
    ) as dag:
        taxi_job(
            "train",
            "train",
            "--service",
            service,
            "--until",
            "{{ (dag_run.conf or {}).get('until', 'latest') }}",
            timeout=timedelta(hours=3),
        )
    globals()[dag.dag_id] = dag
