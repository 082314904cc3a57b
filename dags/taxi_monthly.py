"""Monthly pipeline per service: ingest -> validate -> features -> score for the month of the data interval.

catchup is on, so `airflow backfill create --dag-id taxi_monthly_green --from-date 2022-01-01 --to-date
2023-02-01` processes every month in order (max_active_runs=1: a month's history features read earlier months).
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, Asset

from jobs.airflow_wiring import DEFAULT_ARGS, MONTH, SERVICES, taxi_job

for service in SERVICES:
    with DAG(
        dag_id=f"taxi_monthly_{service}",
        description=f"{service} taxi: land, validate, featurise and score one month",
        schedule="@monthly",
        start_date=datetime(2022, 1, 1),
        catchup=True,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=["taxi", service, "monthly"],
        doc_md=__doc__,
    ) as dag:
        common = ("--service", service, "--month", MONTH)
        ingest = taxi_job("ingest", "ingest", *common)
        validate = taxi_job("validate", "validate", *common)
        features = taxi_job("features", "features", *common, outlets=[Asset(f"lakehouse://silver/features/{service}")])
        score = taxi_job("score", "score", *common, "--skip-if-no-model")
        ingest >> validate >> features >> score
    globals()[dag.dag_id] = dag
