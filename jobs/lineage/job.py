"""Lineage of one prediction, read without Spark (delta-rs and the MLflow registry):

prediction row -> model version (its MLflow run, training months, the features version it trained on) -> the
features row it was scored from, read at the features version the prediction row records -> the validated (silver)
row and the validation run that accepted it (verdict, suite versions, landed file) -> the bronze row -> the raw
file (path in the raw zone, its sha256 recomputed now and compared with the one recorded at landing, when landed).
"""

from __future__ import annotations

from typing import Any

from jobs.ingest import job as ingest
from jobs.models import registry
from jobs.platform import lakehouse, storage
from jobs.platform.config import Settings
from jobs.platform.errors import InputError, MissingUpstream
from jobs.platform.tracking import setup_mlflow

# Identity and provenance columns shown for each row (the full rows are a query away).
SHOWN = {
    lakehouse.PREDICTIONS: (
        "month",
        "predicted_duration_min",
        "predicted_p10_min",
        "predicted_p90_min",
        "actual_duration_min",
        "model_name",
        "model_version",
        "features_version",
        "scored_at",
        "scoring_run_id",
    ),
    lakehouse.FEATURES: ("month", "feature_set_version", "features_run_id", "trip_distance", "hist_level"),
    lakehouse.TRIPS: ("month", "pickup_datetime", "dropoff_datetime", "validation_run_id", "source_checksum"),
    lakehouse.BRONZE: ("month", "source_file", "source_checksum", "ingested_at", "duplicate_rank"),
}


def _row(settings: Settings, table, service: str, trip_id: str, month: str | None, version: int | None = None):
    """The trip's row in ``table`` (at ``version``), as a dict of the shown columns, or None."""
    if not lakehouse.exists(settings, table):
        return None
    filters = [("service", "=", service), ("trip_id", "=", trip_id)] + ([("month", "=", month)] if month else [])
    df = lakehouse.query(settings, table, filters=filters, version=version)
    if df.empty:
        return None
    row = df.sort_values("duplicate_rank").iloc[0] if "duplicate_rank" in df else df.iloc[0]
    return {c: _plain(row[c]) for c in SHOWN[table] if c in df}


def _plain(value: Any) -> Any:
    """A JSON-friendly value: NaN -> None, numpy scalars -> Python, a Delta map -> dict, timestamps -> ISO text."""
    if isinstance(value, list) and all(isinstance(v, tuple) and len(v) == 2 for v in value):
        return dict(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):
        value = value.item()
    return None if value != value else value


def _validation_run(settings: Settings, service: str, run_id: str) -> dict[str, Any] | None:
    if not lakehouse.exists(settings, lakehouse.VALIDATION_RUNS):
        return None
    df = lakehouse.query(
        settings,
        lakehouse.VALIDATION_RUNS,
        ["run_id", "verdict", "started_at", "suite_versions", "landed_file", "landed_checksum", "data_docs"],
        [("service", "=", service), ("run_id", "=", run_id)],
    )
    return {k: _plain(v) for k, v in df.iloc[0].items()} if len(df) else None


def _raw_file(settings: Settings, service: str, month: str, checksum: str) -> dict[str, Any]:
    """The raw-zone file whose checksum the bronze row records: the landed one, or the last accepted copy."""
    accepted = ingest.accepted_landing(settings, service, month)
    for landed in (ingest.landed_file(settings, service, month), accepted[0] if accepted else None):
        if landed is not None and landed.checksum == checksum and storage.location(landed.path).exists():
            path = storage.location(landed.path)
            return {
                "path": str(path),
                "source": landed.source,
                "sha256_recorded": landed.checksum,
                "sha256_now": ingest.sha256(path),
                "size_bytes": landed.size_bytes,
            }
    note = f"no file with this checksum is left in the raw zone of {service} {month} (re-landed since?)"
    return {"path": None, "sha256_recorded": checksum, "note": note}


def trace(settings: Settings, service: str, trip_id: str, month: str | None = None) -> dict[str, Any]:
    """The whole path of one prediction, upstream to the raw file; raises naming the first missing link."""
    prediction = _row(settings, lakehouse.PREDICTIONS, service, trip_id, month)
    if prediction is None:
        where = f"{service} {month}" if month else service
        raise InputError(f"no prediction for trip {trip_id} in gold/predictions ({where})")
    month = prediction["month"]
    setup_mlflow(settings)
    mv = registry.version(settings, service, prediction["model_version"])
    model = {
        "name": mv.name,
        "version": int(mv.version),
        "mlflow_run_id": mv.run_id,
        "training_run_id": mv.tags.get("training_run_id"),
        "train_months": mv.tags.get("train_months", "").split(",") if mv.tags.get("train_months") else [],
        "validation_month": mv.tags.get("valid_month"),
        "trained_through": mv.tags.get("trained_through"),
        "trained_on_features_version": int(mv.tags["features_version"]) if "features_version" in mv.tags else None,
        "gate": mv.tags.get("gate"),
        # The interval's quantile models and the month that calibrated them (none for a version without one).
        "interval": {k.removeprefix("interval_"): v for k, v in mv.tags.items() if k.startswith("interval_")} or None,
    }
    features_version = int(prediction["features_version"])
    features = _row(settings, lakehouse.FEATURES, service, trip_id, month, version=features_version)
    trip = _row(settings, lakehouse.TRIPS, service, trip_id, month)
    bronze = _row(settings, lakehouse.BRONZE, service, trip_id, month)
    for name, row in (("silver/features", features), ("silver/trips", trip), ("bronze/trips", bronze)):
        if row is None:
            raise MissingUpstream(f"trip {trip_id} ({service} {month}) is scored but has no row in {name}")
    return {
        "service": service,
        "trip_id": trip_id,
        "prediction": prediction,
        "model": model,
        "features": {"delta_version": features_version, **features},
        "trip": trip,
        "validation_run": _validation_run(settings, service, trip["validation_run_id"]),
        "bronze": bronze,
        "raw_file": _raw_file(settings, service, month, bronze["source_checksum"]),
    }


def render(lineage: dict[str, Any]) -> str:
    """The lineage as an indented, human-readable tree (``--json`` prints the dict itself)."""
    lines = [f"{lineage['service']} trip {lineage['trip_id']}"]
    for step in ("prediction", "model", "features", "validation_run", "trip", "bronze", "raw_file"):
        lines.append(f"  {step}:")
        for key, value in (lineage[step] or {}).items():
            lines.append(f"    {key}: {value}")
    return "\n".join(lines)
