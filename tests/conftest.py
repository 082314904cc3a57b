"""Shared fixtures: one real SparkSession (local[2]) and one temporary lakehouse for the whole test session."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "tlc"
_LAKEHOUSE = Path(tempfile.mkdtemp(prefix="taxi-test-lakehouse-"))

# Set before any job code loads settings: everything the tests write goes to a throwaway lakehouse.
os.environ.update(
    {
        "TAXI_LAKEHOUSE": str(_LAKEHOUSE),
        "TAXI__SPARK__MASTER": "local[2]",
        "TAXI__SPARK__CONF__spark.sql.shuffle.partitions": "4",
        "TAXI__SPARK__CONF__spark.ui.enabled": "false",
        "TAXI__SPARK__CONF__spark.driver.memory": "3g",
        "TAXI__DATA__ALLOWED_ROOTS": f"[{ROOT / 'data'}, {_LAKEHOUSE}, {tempfile.gettempdir()}]",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }
)
os.environ.pop("TAXI_CONF", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def settings():
    from jobs.config import load_settings

    return load_settings()


@pytest.fixture(scope="session")
def spark(settings):
    from jobs.spark import get_spark

    session = get_spark(settings, app_name="taxi-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def bronze_green(spark, settings):
    """green 2023-01 and 2023-02 ingested once (the real months most tests build on)."""
    from jobs import ingest

    return {m: ingest.run(spark, settings, "green", m) for m in ("2023-01", "2023-02")}


def table_version(settings, table) -> int:
    from deltalake import DeltaTable

    return DeltaTable(table.path(settings)).version()


@pytest.fixture(scope="session")
def validated_green(spark, settings, bronze_green):
    """green 2023-01 and 2023-02 validated (in order, so 2023-02 has a previous month to compare with)."""
    from jobs import validate

    return {m: validate.run(spark, settings, "green", m) for m in ("2023-01", "2023-02")}


def require_chromium() -> str:
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI (.ci/run installs it)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return path


@pytest.fixture(scope="session")
def features_green(spark, settings, validated_green):
    """Features for green 2023-01 and 2023-02 (2023-02's history comes from 2023-01)."""
    from jobs import features

    return {m: features.run(spark, settings, "green", m) for m in ("2023-01", "2023-02")}


@pytest.fixture(scope="session")
def green_history(spark, settings, features_green):
    """Features for every shipped green month (2022-01, 2022-02, 2023-01, 2023-02)."""
    from jobs import features, ingest, validate

    for m in ("2022-01", "2022-02"):
        ingest.run(spark, settings, "green", m)
        validate.run(spark, settings, "green", m)
        features.run(spark, settings, "green", m)
    features.run(spark, settings, "green", "2023-01")  # its history now includes 2022 months... none within 3
    return features.run(spark, settings, "green", "2023-02")


@pytest.fixture(scope="session")
def trained_green(spark, settings, green_history):
    """The real training run with the default hyperparameters: every month up to 2023-01 (validates on 2023-01)."""
    from jobs import train

    return train.run(spark, settings, "green", "2023-01", months=13)


# Run-specific columns: when and by which run a row was written, and the upstream table version it read.
VOLATILE = {
    "ingested_at", "validation_run_id", "quarantined_at", "features_run_id", "scored_at", "scoring_run_id",
    "features_version",
}  # fmt: skip


def table_checksum(path: str, service: str, month: str, exclude: set[str] = VOLATILE) -> tuple[int, str]:
    """(rows, sha256 of the sorted rows) of one partition, read with delta-rs; run-specific columns left out."""
    import hashlib

    from deltalake import DeltaTable

    df = DeltaTable(path).to_pandas(filters=[("service", "=", service), ("month", "=", month)])
    df = df[[c for c in sorted(df.columns) if c not in exclude]]
    df = df.sort_values("trip_id").reset_index(drop=True) if "trip_id" in df else df
    return len(df), hashlib.sha256(df.to_csv(index=False).encode()).hexdigest()


def airflow_env(tmp_path: Path, lakehouse: Path) -> dict[str, str]:
    """Environment for Airflow CLI subprocesses: own AIRFLOW_HOME (sqlite), project DAGs, local Spark, JARs."""
    from jobs.config import load_settings
    from jobs.spark import cached_jars

    venv_bin = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{venv_bin}:{os.environ['PATH']}",
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "false",
        "AIRFLOW_CONN_SPARK_DEFAULT": "spark://local%5B2%5D",
        "AIRFLOW_VAR_TAXI_JARS": ",".join(cached_jars(load_settings()) or []),
        "TAXI_LAKEHOUSE": str(lakehouse),
    }


def airflow_cli(env: dict[str, str], *args: str, timeout: int = 300, check: bool = True):
    """Run one `airflow` CLI command. Retried while sqlite says "database is locked": the test Airflow runs on sqlite,
    whose single writer lock a busy scheduler or dag-processor can hold past the CLI's 5 s busy timeout."""
    for attempt in range(6):
        out = subprocess.run([str(Path(sys.executable).parent / "airflow"), *args], env=env, capture_output=True,
                             text=True, timeout=timeout)  # fmt: skip
        if out.returncode == 0 or "database is locked" not in out.stderr:
            break
        time.sleep(5 * (attempt + 1))
    if check:
        assert out.returncode == 0, f"airflow {' '.join(args)}: {out.stderr[-3000:]}"
    return out
