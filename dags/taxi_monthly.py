"""Monthly pipeline per service: ingest -> validate -> features -> score for the month of the data interval.

catchup is on, so `airflow backfill create --dag-id taxi_monthly_green --from-date 2022-01-01 --to-date
2023-02-01 --reprocess-behavior failed` processes every month (Airflow requires a reprocess behaviour for a DAG with
a depends_on_past task). Ingest and validate of several months may run side by side; features run in
month order (depends_on_past), because a month's history features read the months before it.
"""

from __future__ import annotations

from airflow.sdk import DAG, Asset

from jobs.airflow_wiring import DEFAULT_ARGS, MONTH, MONTHLY_CATCHUP, MONTHLY_END, MONTHLY_START, SERVICES, taxi_job

for service in SERVICES:
    with DAG(
        dag_id=f"taxi_monthly_{service}",
        description=f"{service} taxi: land, validate, featurise and score one month",
        schedule="@monthly",
        start_date=MONTHLY_START,
        end_date=MONTHLY_END,
        catchup=MONTHLY_CATCHUP,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=["taxi", service, "monthly"],
        doc_md=__doc__,
    ) as dag:
        common = ("--service", service, "--month", MONTH)
        ingest = taxi_job("ingest", "ingest", *common)
        validate = taxi_job("validate", "validate", *common)
        # A month's history features read the months before it: whatever runs in parallel (a backfill runs up to
        # --max-active-runs months at once), features wait for the previous month's features to succeed.
        features = taxi_job("features", "features", *common, depends_on_past=True,
                            outlets=[Asset(f"lakehouse://silver/features/{service}")])  # fmt: skip
        score = taxi_job("score", "score", *common, "--skip-if-no-model")
        ingest >> validate >> features >> score
    globals()[dag.dag_id] = dag
