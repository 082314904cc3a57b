"""Stale derived data: a features partition records which validated data it read, so a re-validated month is seen
to make the features built on it stale.

A month's features read its own validated trips and the history months before it (the ``features.history_months``
latest months present among the ``features.history_lookback_months`` before it).
Each features row carries ``input_validation_runs``: a JSON object {month: validation run id} of the silver months it
read. The silver partition of a month is identified by the validation run that wrote it, so features are stale when
any input month has since been re-validated, or a history month has appeared (a backfill of an earlier month).
Read with delta-rs (no Spark): `taxi validate` reports the features it made stale, `taxi train` refuses a window that
holds any (unless ``--allow-stale``). Partitions written before this column existed have no record and are not
judged.
"""

from __future__ import annotations

import json

from jobs.platform import lakehouse
from jobs.platform.config import Settings
from jobs.platform.errors import MissingUpstream
from jobs.platform.months import add_months, history_window, previous_months

COLUMN = "input_validation_runs"


def inputs_record(runs: dict[str, str]) -> str:
    """The value stored in every row of a features partition: {input month: validation run id}, sorted."""
    return json.dumps(dict(sorted(runs.items())), separators=(",", ":"))


def _silver_runs(settings: Settings, service: str, months: list[str]) -> dict[str, str]:
    """{month: the validation run whose rows are in silver now} for the months that have validated rows."""
    if not lakehouse.exists(settings, lakehouse.TRIPS):
        return {}
    df = lakehouse.query(
        settings, lakehouse.TRIPS, ["month", "validation_run_id"], [("service", "=", service), ("month", "in", months)]
    )
    return dict(df.drop_duplicates("month")[["month", "validation_run_id"]].itertuples(index=False, name=None))


def stale_months(settings: Settings, service: str, months: list[str]) -> dict[str, str]:
    """{features month: why it is stale} among ``months`` (months without features, or without a record, are
    skipped)."""
    if not months or not lakehouse.exists(settings, lakehouse.FEATURES):
        return {}
    if COLUMN not in lakehouse.column_names(settings, lakehouse.FEATURES):
        return {}
    recorded = lakehouse.query(
        settings, lakehouse.FEATURES, ["month", COLUMN], [("service", "=", service), ("month", "in", months)]
    ).drop_duplicates()
    cfg = settings.features
    stale = {}
    for month, record in recorded.itertuples(index=False, name=None):
        if record is None:
            continue
        read = json.loads(record)
        present = _silver_runs(settings, service, [month, *previous_months(month, cfg.history_lookback_months)])
        window = history_window(
            month, [m for m in present if m != month], cfg.history_months, cfg.history_lookback_months
        )
        now = {m: run for m, run in present.items() if m == month or m in window}
        changed = [m for m in sorted(now.keys() | read.keys()) if now.get(m) != read.get(m)]
        if changed:
            stale[month] = "; ".join(_why(m, read, now) for m in changed)
    return stale


def _why(month: str, read: dict[str, str], now: dict[str, str]) -> str:
    if month not in read:
        return f"silver {month} appeared since"
    if month not in now:
        return f"silver {month} is gone, or no longer among the latest history months"
    return f"silver {month} was re-validated ({now[month]}; the features read {read[month]})"


def made_stale_by(settings: Settings, service: str, month: str) -> dict[str, str]:
    """The features a new validation of ``month`` made stale: its own and those of the months whose history
    lookback holds it."""
    lookback = settings.features.history_lookback_months
    return stale_months(settings, service, [add_months(month, k) for k in range(lookback + 1)])


def require_fresh(settings: Settings, service: str, months: list[str]) -> None:
    """Refuse to train on stale features, naming each month, why, and the command that rebuilds it."""
    stale = stale_months(settings, service, months)
    if stale:
        lines = "; ".join(f"{m}: {why}" for m, why in sorted(stale.items()))
        commands = " && ".join(f"taxi features --service {service} --month {m}" for m in sorted(stale))
        raise MissingUpstream(
            f"{service} features are stale for {', '.join(sorted(stale))} ({lines}): run `{commands}` (in month "
            "order), or pass --allow-stale"
        )
