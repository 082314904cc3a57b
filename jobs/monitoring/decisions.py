"""The monitor's decisions as other components read them: from the Delta drift table (shared storage), without
Spark, so an Airflow branch on any worker can act on a report another worker wrote."""

from __future__ import annotations

import datetime as dt

from jobs.platform import lakehouse
from jobs.platform.config import Settings


def weeks_asking_for_retraining(settings: Settings, service: str, since: dt.datetime) -> list[str]:
    """ISO weeks of ``service`` reported at or after ``since`` whose verdict asked for retraining."""
    if not lakehouse.exists(settings, lakehouse.DRIFT):
        return []
    if "retrain" not in lakehouse.column_names(settings, lakehouse.DRIFT):  # written before the column existed
        return []
    rows = lakehouse.query(settings, lakehouse.DRIFT, ["week", "retrain", "computed_at"], [("service", "=", service)])
    since = since if since.tzinfo else since.replace(tzinfo=dt.UTC)
    return sorted(
        {
            week
            for week, retrain, at in zip(*(rows[c].tolist() for c in ("week", "retrain", "computed_at")), strict=True)
            if retrain and at is not None and (at if at.tzinfo else at.replace(tzinfo=dt.UTC)) >= since
        }
    )
