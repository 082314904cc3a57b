"""``taxi demo``: the whole pipeline on the real sample months the repo ships, on embedded defaults.

green: every shipped month through ingest -> validate -> features; train on all months up to the one before
the last; score the last month with the champion; a weekly drift report on it. yellow: the shipped samples of
every schema generation through ingest -> validate.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from jobs.features import job as features
from jobs.ingest import job as ingest
from jobs.monitoring import job as monitor
from jobs.platform import lakehouse
from jobs.platform.config import Settings
from jobs.platform.errors import MonthRejected
from jobs.platform.log import JobLog
from jobs.platform.months import add_months, month_start, months_between
from jobs.scoring import job as score
from jobs.training import job as train
from jobs.validation import job as validate
from jobs.validation.gx import DOCS_INDEX, OVERVIEW, published_root


def shipped_months(settings: Settings, service: str) -> list[str]:
    """Months with a shipped real parquet file for ``service``, oldest first."""
    files = (settings.data.sample_dir / service).glob(f"{service}_tripdata_*.parquet")
    return sorted({f.name.split("_tripdata_")[1][:7] for f in files})


def run(spark, settings: Settings) -> dict[str, Any]:
    log = JobLog("demo")
    out: dict[str, Any] = {"lakehouse": str(settings.lakehouse)}
    green = shipped_months(settings, "green")
    for month in green:
        ingest.run(spark, settings, "green", month)
        validate.run(spark, settings, "green", month)
        features.run(spark, settings, "green", month)
    for month in shipped_months(settings, "yellow"):
        ingest.run(spark, settings, "yellow", month)
        try:
            validate.run(spark, settings, "yellow", month)
        except MonthRejected as e:  # shown, not fatal: that is what the validation report is for
            log.warning("yellow month rejected", month=month, reason=str(e))

    last = green[-1]
    until = add_months(last, -1)
    span = months_between(green[0], until)  # every shipped month before the last one is in the window
    trained = train.run(spark, settings, "green", until, months=span)
    scored = score.run(spark, settings, "green", last)
    iso = (month_start(last) + dt.timedelta(days=7)).isocalendar()  # the week of the 8th lies inside the month
    week = f"{iso.year}-W{iso.week:02d}"
    drift = monitor.run(spark, settings, "green", week)
    out.update(train=trained, score=scored, monitor={k: drift[k] for k in ("week", "verdict", "retrain", "report")})

    print("\n=== monitoring/validation_runs: every landed month's verdict and rows ===")
    lakehouse.read(spark, settings, lakehouse.VALIDATION_RUNS).orderBy("started_at").select(
        "service", "month", "verdict", "rows_total", "rows_valid", "rows_quarantined", "failed_share"
    ).dropDuplicates(["service", "month"]).orderBy("service", "month").show(50, truncate=False)
    reports = published_root(settings)
    print(f"Data Docs (validation reports): {reports / DOCS_INDEX}")
    print(f"Validation overview (months side by side): {reports / OVERVIEW}")
    print(f"MLflow: {settings.tracking_uri}  (mlflow ui --backend-store-uri {settings.tracking_uri})")
    print(
        f"Training (green until {add_months(last, -1)}): best {trained['best_candidate']} "
        f"rmse {trained['best_rmse']} on {trained['valid_month']}; candidates {trained['candidates']}; "
        f"champion v{trained['champion_version']}; bake-off report -> {trained['bakeoff']}"
    )
    print(
        f"Scored green {last} with {scored['model_name']} v{scored['model_version']}: {scored['rows']} trips; "
        f"predicted vs actual RMSE {scored['rmse_in_training_range']} min, MAE {scored['mae_in_training_range']} "
        f"min (trips of {settings.features.target_min_minutes:g}-{settings.features.target_max_minutes:g} min)"
    )
    print(
        f"Drift report green {week}: verdict {drift['verdict']} (retrain: {drift['retrain']}; drifted: "
        f"{', '.join(drift['drifted_features']) or 'none'}) -> {drift['report']}"
    )
    log.info("done", duration_s=round(log.elapsed(), 1))
    return out
