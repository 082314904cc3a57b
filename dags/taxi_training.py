"""Training per service: once per new month, and when the monitor asks for it.

The monthly DAG updates the features asset only for a month newer than every month announced before (never from a
backfill or a rerun of an old month), so each new month starts one training. The monitor's trigger passes
{"until": "latest"}; a manual trigger may pass {"until": "YYYY-MM"}. The registry gate inside the job decides
whether the new model becomes the champion, and the job registers nothing when its window adds no month the
champion has not seen.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG

from jobs.entry.airflow_wiring import DEFAULT_ARGS, SERVICES, features_asset, taxi_job

for service in SERVICES:
    with DAG(
        dag_id=f"taxi_training_{service}",
        description=f"{service} taxi: train XGBoost + LightGBM on Spark, gate in the MLflow registry",
        schedule=[features_asset(service)],
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
