"""The run context every job's steps share: the session, the settings, what the run is about, its log and run id."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jobs.platform import lakehouse
from jobs.platform.config import Settings
from jobs.platform.log import JobLog
from jobs.platform.months import check_service


@dataclass(frozen=True)
class RunContext:
    spark: Any
    settings: Settings
    service: str
    period: str  # the month, ISO week or window end the run is about
    log: JobLog
    run_id: str

    @classmethod
    def start(cls, job: str, spark, settings: Settings, service: str, period: str) -> RunContext:
        check_service(service)
        return cls(spark, settings, service, period, JobLog(job, service, period), lakehouse.new_run_id(job))
