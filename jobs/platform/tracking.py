"""MLflow tracking: connect to the configured store (bounded retries, a clear error) and create experiments with
their artifacts under the lakehouse."""

from __future__ import annotations

import time

from jobs.platform.config import Settings
from jobs.platform.errors import ServiceUnavailable


# ---------------------------------------------------------------------------------------------------------------
# MLflow
# ---------------------------------------------------------------------------------------------------------------
def setup_mlflow(settings: Settings):
    """Point MLflow at the configured store; fail clearly after bounded retries if it cannot be reached.

    Tries ``mlflow.connect_retries`` times, pausing ``connect_backoff_s`` (doubled each time) in between.
    """
    import os

    import mlflow

    # Bound MLflow's own HTTP retries (its default backs off for minutes) so an outage fails fast and clearly.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    if settings.mlflow.tracking_uri is None:  # the embedded sqlite store and its artifacts live in the lakehouse
        settings.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
    uri = settings.tracking_uri
    retries, backoff_s = settings.mlflow.connect_retries, settings.mlflow.connect_backoff_s
    last: Exception | None = None
    for attempt in range(retries):
        try:
            # Probe with a private client: global MLflow state changes only once the store answers.
            mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments(max_results=1)
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            return mlflow
        except Exception as e:  # connection refused, DNS, 5xx...
            last = e
            if attempt < retries - 1:
                time.sleep(backoff_s * (2**attempt))
    raise ServiceUnavailable(f"MLflow tracking server {uri} unreachable after {retries} tries: {last}")


def experiment_id(settings: Settings, name: str) -> str:
    """Create the experiment on first use with its artifacts under the lakehouse (never ./mlruns)."""
    import mlflow

    full = settings.experiment(name)
    exp = mlflow.get_experiment_by_name(full)
    if exp is not None:
        return exp.experiment_id
    location = settings.mlflow_artifacts.as_uri() + f"/{full}" if settings.mlflow.tracking_uri is None else None
    return mlflow.create_experiment(full, artifact_location=location)
