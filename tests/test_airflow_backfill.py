"""A real Airflow 3 backfill: `airflow standalone` (API server, scheduler, dag-processor, triggerer) on loopback runs
`airflow backfill create` over two shipped yellow months; a second backfill reprocesses the newest, completed month
and changes no table's row count."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import lakehouse

from .conftest import airflow_cli, airflow_env, table_checksum, wait_until

DEFAULT_TIER = "slow"  # tests without a tier marker of their own
DAG_ID = "taxi_monthly_yellow"
MONTHS = ("2019-03", "2019-04")
RUNS_TIMEOUT_S = 1500
POLL_S = 3  # how often the test asks Airflow for the runs' states
TABLES = (lakehouse.BRONZE, lakehouse.TRIPS, lakehouse.QUARANTINE, lakehouse.FEATURES)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _airflow(env, *args) -> str:
    return airflow_cli(env, *args).stdout


def _metadata(env, sql: str, *params) -> list[tuple]:
    """Read Airflow's metadata database directly: polling through the `airflow` CLI would start a Python process
    that imports Airflow every few seconds, and on 2 cores that starves the Spark jobs under test."""
    with sqlite3.connect(f"file:{env['AIRFLOW_HOME']}/airflow.db?mode=ro", uri=True, timeout=30) as con:
        return con.execute(sql, params).fetchall()


def _runs(env) -> dict[str, tuple[str, str]]:
    """{run_id: (logical month, state)} of every run of the DAG."""
    rows = _metadata(env, "select run_id, logical_date, state from dag_run where dag_id = ?", DAG_ID)
    return {run_id: (str(logical)[:7], state) for run_id, logical, state in rows}


def _finished(env, runs: int = len(MONTHS)) -> bool:
    """Every run ended and the scheduler closed the backfill: it marks a backfill complete on a later loop than its
    last run's end, and a new backfill of the same DAG is refused until then."""
    states = [state for _, state in _runs(env).values()]
    open_backfills = _metadata(env, "select id from backfill where dag_id = ? and completed_at is null", DAG_ID)
    return len(states) == runs and all(s in ("success", "failed") for s in states) and not open_backfills


def _delta_version(path: Path) -> int:
    from deltalake import DeltaTable

    return DeltaTable(str(path)).version()


def _counts(lake: Path) -> dict[str, int]:
    return {f"{t.relpath} {m}": table_checksum(str(lake / t.relpath), "yellow", m)[0] for t in TABLES for m in MONTHS}


@pytest.fixture()
def airflow_stack(tmp_path):
    """`airflow standalone` on a free loopback port, with the monthly DAG bounded to the two months."""
    lake = tmp_path / "lakehouse"
    port = _free_port()
    env = {
        **airflow_env(tmp_path, lake),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": os.urandom(16).hex(),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "true",
        # The DAG files do not change during the test: parse them once, not every few seconds.
        "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "600",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "600",
        "AIRFLOW__API__WORKERS": "1",
        # History only: unpausing the DAG must schedule nothing but what the backfill asks for.
        "TAXI_DAG_START_DATE": f"{MONTHS[0]}-01",
        "TAXI_DAG_END_DATE": f"{MONTHS[-1]}-01",
        "TAXI_DAG_CATCHUP": "false",
    }
    _airflow(env, "db", "migrate")
    log = (tmp_path / "standalone.log").open("w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "airflow"), "standalone"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:

        def registered() -> bool:
            assert proc.poll() is None, (tmp_path / "standalone.log").read_text()[-3000:]
            tables = {r[0] for r in _metadata(env, "select name from sqlite_master where type = 'table'")}
            return "dag" in tables and bool(_metadata(env, "select dag_id from dag where dag_id = ?", DAG_ID))

        wait_until("the dag-processor registered the DAG", registered, 300, POLL_S)
        yield env, lake
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_backfill_over_two_months_completes_and_reprocessing_one_changes_no_row_count(airflow_stack):
    env, lake = airflow_stack
    _airflow(env, "dags", "unpause", DAG_ID)
    window = ("--dag-id", DAG_ID, "--from-date", f"{MONTHS[0]}-01", "--to-date", f"{MONTHS[-1]}-01")
    # `features` depends on the past, and Airflow then asks what to do with months that already ran.
    _airflow(env, "backfill", "create", *window, "--reprocess-behavior", "failed")
    wait_until("both backfill runs finished", lambda: _finished(env), RUNS_TIMEOUT_S, POLL_S)
    runs = _runs(env)
    assert sorted(runs.values()) == [(m, "success") for m in MONTHS], runs
    assert all(run_id.startswith("backfill__") for run_id in runs)  # the unpaused DAG scheduled nothing itself
    first = _counts(lake)
    assert all(n > 0 for k, n in first.items() if not k.startswith("quarantine")), first
    for m in MONTHS:
        assert first[f"silver/trips {m}"] + first[f"quarantine/trips {m}"] == first[f"bronze/trips {m}"]

    # A second backfill over the newest month, reprocessing a completed run: every task reruns, no row count moves.
    features_before = _delta_version(lake / lakehouse.FEATURES.relpath)
    newest = ("--dag-id", DAG_ID, "--from-date", f"{MONTHS[-1]}-01", "--to-date", f"{MONTHS[-1]}-01")
    _airflow(env, "backfill", "create", *newest, "--reprocess-behavior", "completed")
    wait_until(
        "second backfill rewrote the month and finished",
        lambda: _delta_version(lake / lakehouse.FEATURES.relpath) > features_before and _finished(env),
        RUNS_TIMEOUT_S,
        POLL_S,
    )
    assert sorted(_runs(env).values()) == [(m, "success") for m in MONTHS]
    assert _counts(lake) == first
