"""``taxi demo``: the whole pipeline on the real sample months the repo ships, on embedded defaults."""

from __future__ import annotations

from . import ingest, lakehouse
from .config import Settings
from .log import JobLog


def shipped_months(settings: Settings, service: str) -> list[str]:
    """Months with a shipped real parquet file for ``service``, oldest first."""
    files = (settings.data.sample_dir / service).glob(f"{service}_tripdata_*.parquet")
    return sorted({f.name.split("_tripdata_")[1][:7] for f in files})


def run(spark, settings: Settings) -> dict:
    log = JobLog("demo")
    months = {s: shipped_months(settings, s) for s in ("green", "yellow")}
    for service, ms in months.items():
        for month in ms:
            ingest.run(spark, settings, service, month)
    bronze = lakehouse.read(spark, settings, lakehouse.BRONZE)
    print("\nbronze/trips (" + lakehouse.BRONZE.path(settings) + "):")
    bronze.groupBy("service", "month").count().orderBy("service", "month").show(50, truncate=False)
    log.info("done", duration_s=round(log.elapsed(), 1))
    return {"lakehouse": str(settings.lakehouse), "months": months}
