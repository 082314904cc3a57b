"""Monthly pipeline per service: wait for the month's file -> ingest -> validate -> features -> score.

A run stands for one calendar month (its data interval) and is created when that month ends. The TLC publishes a
month about two months later, so the first task waits (reschedule mode: no worker slot held) until the source
answers, then the month is landed, validated, featurised and scored. Backfills of history work unchanged:
`airflow backfill create --dag-id taxi_monthly_green --from-date 2022-01-01 --to-date 2023-02-01
--reprocess-behavior failed` processes every month (their files are out, so the wait passes at once). Features run
in month order (depends_on_past): a month's history features read the months before it. A month newer than any
announced before updates the features asset, which schedules taxi_training_<service>; scoring updates the
predictions asset, which schedules taxi_monitoring_<service>.
"""

from __future__ import annotations

from airflow.sdk import DAG, CronDataIntervalTimetable

from jobs.entry.airflow_wiring import (
    DEFAULT_ARGS,
    MONTH,
    MONTHLY_END,
    MONTHLY_START,
    SERVICES,
    SETTINGS,
    announce_new_month,
    predictions_asset,
    taxi_job,
    wait_for_publication,
)

for service in SERVICES:
    with DAG(
        dag_id=f"taxi_monthly_{service}",
        description=f"{service} taxi: wait for the month's file, land, validate, featurise and score it",
        schedule=CronDataIntervalTimetable("0 0 1 * *", timezone="UTC"),  # the run for M is created when M ends
        start_date=MONTHLY_START,
        end_date=MONTHLY_END,
        catchup=SETTINGS.catchup,
        max_active_runs=1,
        default_args=DEFAULT_ARGS,
        tags=["taxi", service, "monthly"],
        doc_md=__doc__,
    ) as dag:
        common = ("--service", service, "--month", MONTH)
        published = wait_for_publication(service)
        ingest = taxi_job("ingest", "ingest", *common)
        # A rejection is final, not transient: it sets the file aside and puts the last accepted data back, so a
        # retry would re-validate that data and turn the run green. Rerun from ingest instead.
        validate = taxi_job("validate", "validate", *common, retries=0)
        # Whatever runs in parallel (a backfill runs up to --max-active-runs months at once), features wait for the
        # previous month's features to succeed.
        features = taxi_job("features", "features", *common, depends_on_past=True)
        score = taxi_job("score", "score", *common, "--skip-if-no-model", outlets=[predictions_asset(service)])
        published >> ingest >> validate >> features >> [score, announce_new_month(service)]
    globals()[dag.dag_id] = dag
