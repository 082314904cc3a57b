"""`taxi lineage`: one prediction traced back to the model that made it and the rows and file it came from."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

from jobs.platform import lakehouse

from .conftest import partition_rows
from .processes import job_env, taxi_bin

DEFAULT_TIER = "integration"  # tests without a tier marker of their own


def _lineage(lake: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [taxi_bin(), "lineage", "--service", "green", *args],
        env=job_env(lake),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_random_prediction_traces_back_to_its_model_features_version_validation_run_and_raw_file(golden):
    preds = partition_rows(golden.settings, lakehouse.PREDICTIONS, "green", "2023-02")
    row = preds.iloc[random.Random(7).randrange(len(preds))]
    out = _lineage(golden.settings.lakehouse, "--trip-id", row["trip_id"], "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])["lineage"]

    # The model: the version in the prediction row, its MLflow run and the months it trained on.
    client = golden.client()
    mv = client.get_model_version(found["model"]["name"], str(row["model_version"]))
    assert found["model"]["version"] == row["model_version"] and found["model"]["mlflow_run_id"] == mv.run_id
    assert found["model"]["train_months"] == ["2022-01", "2022-02"] and found["model"]["validation_month"] == "2023-01"
    assert found["model"]["interval"]["uri"] == mv.tags["interval_uri"]  # and the month that calibrated it
    assert found["model"]["interval"]["calibration_month"] == "2023-01"
    assert (
        found["prediction"]["predicted_p10_min"]
        <= row["predicted_duration_min"]
        <= found["prediction"]["predicted_p90_min"]
    )
    # The features row was read at the Delta version the prediction row records.
    assert found["features"]["delta_version"] == row["features_version"]
    assert found["features"]["features_run_id"]
    # The validation run that accepted the month, and the file: sha256 as `sha256sum` computes it.
    assert found["validation_run"]["verdict"] == "passed"
    assert found["validation_run"]["run_id"] == found["trip"]["validation_run_id"]
    assert set(found["validation_run"]["suite_versions"]) == {"green_file", "green_rows"}
    raw = Path(found["raw_file"]["path"])
    sha256sum = subprocess.run(["sha256sum", str(raw)], capture_output=True, text=True, check=True).stdout.split()[0]
    assert found["raw_file"]["sha256_now"] == sha256sum == found["bronze"]["source_checksum"]
    assert raw.name == found["bronze"]["source_file"] == found["validation_run"]["landed_file"]


def test_an_unknown_trip_is_a_clear_error():
    out = _lineage(Path("/nonexistent-lakehouse"), "--trip-id", "no-such-trip", "--month", "2023-02")
    assert out.returncode == 2
    assert "no prediction for trip no-such-trip in gold/predictions (green 2023-02)" in out.stderr
