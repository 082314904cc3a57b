"""Test tiers, the one SparkSession, and the golden lakehouse.

Every test carries exactly one tier marker (its own, or its module's ``DEFAULT_TIER``), which also sets its timeout:

- ``unit``: no JVM (months, config, metrics math, verdicts, the gate rule, DAG wiring and rendered templates);
- ``spark``: tiny in-memory frames on the shared local[2] session (transforms, rule predicates, binning, parity);
- ``integration``: the real sample months, read from the golden lakehouse or written into a private copy of it;
- ``slow``: production model settings, killed and concurrent processes, the Airflow scheduler, a Spark cluster.

`make test` runs the first three (the gate), `make test-slow` the last; CI runs both.

The golden lakehouse is built once per session (the shipped green months through every stage, with small model
settings) and never written afterwards: a test that writes asks for ``lake``, a private copy, so no test restores
anything and the order of tests cannot matter. A session that changed the golden tree fails at teardown.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "tlc"
_SCRATCH = Path(tempfile.mkdtemp(prefix="taxi-test-lakehouse-"))

TIER_TIMEOUT_S = {"unit": 60, "spark": 300, "integration": 900, "slow": 1800}
JVM_FIXTURES = {"spark", "golden", "lake", "empty_lake"}
GOLDEN_GREEN = ("2022-01", "2022-02", "2023-01", "2023-02")
GOLDEN_WEEK = "2023-W06"
GOLDEN_WEEKS = ("2023-W06", "2023-W07", "2023-W08")  # the complete ISO weeks of 2023-02
# Small model settings for every test but the quality bar (which restores the profile's own, see `production`).
SMALL_MODELS = {
    "TAXI__TRAIN__XGBOOST__n_estimators": "60",
    "TAXI__TRAIN__XGBOOST__max_depth": "6",
    "TAXI__TRAIN__XGBOOST__learning_rate": "0.15",
    "TAXI__TRAIN__LIGHTGBM__numIterations": "60",
    "TAXI__TRAIN__LIGHTGBM__numLeaves": "31",
    "TAXI__TRAIN__LIGHTGBM__learningRate": "0.15",
    "TAXI__TRAIN__WARM_START_ROUNDS": "20",
    "TAXI__TRAIN__INTERVALS__PARAMS__numIterations": "60",
}

# A child process's driver runs one job on a small month: the C2 compiler's work (about a core for the first half
# minute) does not pay back before the JVM exits. C1 alone made such jobs about 15% faster here (cold `taxi validate`
# 43 s against 50 s, a test of two concurrent scorers 40 s against 54-77 s). Not for this process's long-lived
# session, whose later jobs ran 1.5 times slower without C2.
ONE_JOB_DRIVER = "-XX:TieredStopAtLevel=1"

# Set before any job code loads settings: everything the tests write goes to throwaway lakehouses, and the
# bounded waits (MLflow connection back-off, Delta conflict back-off) are short.
os.environ.update(
    {
        "TAXI_LAKEHOUSE": str(_SCRATCH),
        "TAXI__SPARK__MASTER": "local[2]",
        "TAXI__SPARK__CONF__spark.sql.shuffle.partitions": "4",
        "TAXI__SPARK__CONF__spark.ui.enabled": "false",
        "TAXI__SPARK__CONF__spark.driver.memory": "3g",
        "TAXI__DATA__ALLOWED_ROOTS": f"[{ROOT / 'data'}, {tempfile.gettempdir()}]",
        "TAXI__MLFLOW__CONNECT_BACKOFF_S": "0.2",
        "TAXI__WRITES__CONFLICT_BACKOFF_S": "0.1",
        **SMALL_MODELS,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }
)
os.environ.pop("TAXI_CONF", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)


# ---- tiers ----------------------------------------------------------------------------------------------------
def _tiers(item) -> list[str]:
    return [m.name for m in item.iter_markers() if m.name in TIER_TIMEOUT_S]


def _tier(item) -> str:
    return _tiers(item)[0]


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(config, items):
    """A test's tier is its own marker, else its module's DEFAULT_TIER (a module-level mark would add a second
    tier to the tests that have their own, and `-m unit` would then select a slow test)."""
    for item in items:
        default = getattr(item.module, "DEFAULT_TIER", None)
        if not _tiers(item) and default in TIER_TIMEOUT_S:
            item.add_marker(getattr(pytest.mark, default))
    wrong = [item.nodeid for item in items if len(set(_tiers(item))) != 1]
    if wrong:
        raise pytest.UsageError(f"tests need exactly one tier marker ({', '.join(TIER_TIMEOUT_S)}): {wrong}")
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIER_TIMEOUT_S[_tier(item)]))


def pytest_runtest_setup(item):
    if _tier(item) == "unit" and JVM_FIXTURES & set(item.fixturenames):
        pytest.fail(f"unit test {item.nodeid} uses a JVM fixture ({JVM_FIXTURES & set(item.fixturenames)})")


# ---- the session and the lakehouses ---------------------------------------------------------------------------
def own_environment() -> dict[str, str]:
    """This process's environment without the tracking URI MLflow exports into it at every ``set_tracking_uri``: a
    test's lakehouse uses its own MLflow store, never the store the previous test pointed MLflow at (a backtest on
    an empty lakehouse once found another test's champion there, and trained nothing until a later month)."""
    return {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}


@pytest.fixture(scope="session")
def settings():
    """The scratch lakehouse's settings (TAXI_LAKEHOUSE): what the CLI sees unless a test points it elsewhere."""
    from jobs.platform.config import load_settings

    return load_settings(env=own_environment())


@pytest.fixture(scope="session")
def spark(settings):
    from jobs.platform.spark import get_spark

    session = get_spark(settings, app_name="taxi-tests")
    yield session
    session.stop()


def settings_for(lakehouse: Path, base=None):
    """``base`` (default: the environment's settings) with its lakehouse moved to ``lakehouse``."""
    from jobs.platform.config import load_settings

    return (base or load_settings(env=own_environment())).model_copy(update={"lakehouse": lakehouse}, deep=True)


@dataclass
class Golden:
    """What the golden build wrote, and the summaries of the jobs that wrote it."""

    settings: Any
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def client(self):
        """An MLflow client on the golden store (without touching the process's global tracking URI)."""
        import mlflow

        uri = self.settings.tracking_uri
        return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


# MLflow writes this marker into a registered model's artifact folder each time it loads the model by a models:/ URI
# (in place, with a local artifact store): loading is reading, so it does not count as a write.
LOAD_MARKERS = {"registered_model_meta"}


def _fingerprint(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and p.name not in LOAD_MARKERS
    }


def build_golden(spark, s, months=GOLDEN_GREEN, weeks=GOLDEN_WEEKS) -> dict[str, Any]:
    """The golden sequence of jobs on the lakehouse of ``s``: ``months`` landed, validated and featurised (the
    others must be there already), training until 2023-01, scoring of 2023-02, the drift reports of ``weeks``.
    test_object_store runs its last month onwards on an object store."""
    from jobs.features import job as features
    from jobs.ingest import job as ingest
    from jobs.monitoring import job as monitor
    from jobs.scoring import job as score
    from jobs.training import job as train
    from jobs.validation import job as validate

    summaries = {}
    for month in months:
        summaries[f"ingest {month}"] = ingest.run(spark, s, "green", month)
        summaries[f"validate {month}"] = validate.run(spark, s, "green", month)
        summaries[f"features {month}"] = features.run(spark, s, "green", month)
    summaries["train"] = train.run(spark, s, "green", "2023-01", months=13)
    summaries["score"] = score.run(spark, s, "green", "2023-02")
    for week in weeks:
        summaries[f"monitor {week}"] = monitor.run(spark, s, "green", week)
    summaries["monitor"] = summaries[f"monitor {GOLDEN_WEEK}"]
    return json.loads(json.dumps(summaries, default=str))  # what a reused build reads back


@pytest.fixture(scope="session")
def golden(spark, tmp_path_factory):
    """The shipped green months through ingest -> validate -> features, a training run until 2023-01 (validated on
    2023-01), scoring of 2023-02 and the drift reports of its complete weeks (``summaries["monitor"]`` is 2023-W06,
    ``summaries["monitor <week>"]`` each). Read-only: tests that write use ``lake``."""
    keep = os.environ.get("TAXI_TEST_GOLDEN_DIR")  # developer loop: build once, reuse across pytest runs
    root = Path(keep) if keep else tmp_path_factory.mktemp("golden")
    s = settings_for(root / "lakehouse")
    g = Golden(s)
    saved = root / "summaries.json"
    if keep and saved.exists():
        g.summaries = json.loads(saved.read_text())
    else:
        shutil.rmtree(s.lakehouse, ignore_errors=True)
        g.summaries = build_golden(spark, s)
        saved.write_text(json.dumps(g.summaries))
    before = _fingerprint(s.lakehouse)
    yield g
    after = _fingerprint(s.lakehouse)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"tests wrote to the golden lakehouse (use the `lake` fixture): {changed[:10]}"


def copy_lakehouse(src, dst: Path):
    """A private copy of a lakehouse, with its MLflow store's absolute artifact locations moved along."""
    shutil.copytree(src.lakehouse, dst)
    db = dst / "mlflow" / "mlflow.db"
    if db.exists():
        old, new = str(src.lakehouse), str(dst)
        with sqlite3.connect(db) as con:
            tables = [r[0] for r in con.execute("select name from sqlite_master where type = 'table'")]
            for table in tables:
                for col in [r[1] for r in con.execute(f"pragma table_info('{table}')")]:
                    con.execute(
                        f'update \'{table}\' set "{col}" = replace("{col}", ?, ?) '
                        f'where typeof("{col}") = \'text\' and instr("{col}", ?) > 0',
                        (old, new, old),
                    )
    return settings_for(dst, src)


@pytest.fixture
def lake(golden, tmp_path):
    """Settings on a private copy of the golden lakehouse, for a test that writes."""
    return copy_lakehouse(golden.settings, tmp_path / "lakehouse")


@pytest.fixture
def empty_lake(spark, tmp_path):
    """Settings on a new, empty lakehouse."""
    return settings_for(tmp_path / "lakehouse")


@pytest.fixture
def cli_lakehouse(monkeypatch):
    """Point the CLI (which reads TAXI_LAKEHOUSE) at a test's lakehouse: ``cli_lakehouse(settings)``."""

    def point(s):
        monkeypatch.setenv("TAXI_LAKEHOUSE", str(s.lakehouse))
        for exported in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # an earlier test's store (own_environment)
            monkeypatch.delenv(exported, raising=False)
        return s

    return point


def production(settings):
    """``settings`` with the profile's own training settings (conf/local.yaml), not the tests' small models."""
    from jobs.platform.config import load_settings

    env = {k: v for k, v in os.environ.items() if k not in SMALL_MODELS}
    return settings.model_copy(update={"train": load_settings(env=env).train}, deep=True)


# ---- helpers --------------------------------------------------------------------------------------------------
def table_version(settings, table) -> int:
    from deltalake import DeltaTable

    return DeltaTable(table.path(settings)).version()


# Run-specific columns: when and by which run a row was written, and the upstream table version it read.
VOLATILE = {
    "ingested_at",
    "validation_run_id",
    "quarantined_at",
    "features_run_id",
    "scored_at",
    "scoring_run_id",
    "features_version",
    "input_validation_runs",
}


def table_checksum(path: str, service: str, month: str, exclude: set[str] = VOLATILE) -> tuple[int, str]:
    """(rows, sha256 of the sorted rows) of one partition, read with delta-rs; run-specific columns left out."""
    from deltalake import DeltaTable

    return frame_checksum(
        DeltaTable(path).to_pandas(filters=[("service", "=", service), ("month", "=", month)]), exclude
    )


def frame_checksum(df, exclude: set[str] = VOLATILE) -> tuple[int, str]:
    """(rows, sha256 of the rows sorted by trip_id) of a partition read by any reader; ``exclude`` left out."""
    import hashlib

    df = df[[c for c in sorted(df.columns) if c not in exclude]]
    df = df.sort_values("trip_id").reset_index(drop=True) if "trip_id" in df else df
    return len(df), hashlib.sha256(df.to_csv(index=False).encode()).hexdigest()


def partition_rows(settings, table, service: str, month: str, columns: list[str] | None = None):
    """One (service, month) partition as pandas, read with delta-rs (no Spark)."""
    from deltalake import DeltaTable

    return DeltaTable(table.path(settings)).to_pandas(
        filters=[("service", "=", service), ("month", "=", month)], columns=columns
    )
