"""Shadow: put a registered version that is not the champion beside it (alias ``challenger``), or take it out.

While a challenger is set, every `taxi score` with the champion also scores the month with the challenger into
``gold/shadow_predictions`` (same schema, same trips, after the champion's partition is written), and the weekly
monitor compares both on the same trips once their durations are known. BI users read ``gold/predictions``, which
only ever holds the champion's rows. No Spark: this only moves a registry alias.
"""

from __future__ import annotations

from typing import Any

from jobs.models import registry
from jobs.platform.config import Settings
from jobs.platform.errors import InputError
from jobs.platform.log import JobLog
from jobs.platform.months import check_service
from jobs.platform.tracking import setup_mlflow


def run(settings: Settings, service: str, version: int | None = None, stop: bool = False) -> dict[str, Any]:
    check_service(service)
    log = JobLog("shadow", service, "stop" if stop else f"v{version}")
    setup_mlflow(settings)
    name = settings.registered_model(service)
    current = registry.challenger(settings, service)
    if stop:
        if current is not None:
            registry.remove_challenger(settings, service)
        log.info("done", stopped=current.version if current else "none")
        return {"challenger_version": None, "stopped_version": int(current.version) if current else None}
    target = registry.version(settings, service, version)
    champion = registry.champion(settings, service)
    if champion is not None and str(champion.version) == str(target.version):
        raise InputError(
            f"{name} v{target.version} is the champion: shadow a version that is not (the champion is scored anyway)"
        )
    registry.set_challenger(settings, service, target.version)
    log.info("done", challenger=target.version, champion=champion.version if champion else "none")
    return {
        "challenger_version": int(target.version),
        "previous_challenger_version": int(current.version) if current else None,
        "champion_version": int(champion.version) if champion else None,
    }
