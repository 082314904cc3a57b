"""A real Airflow 3 backfill: `airflow standalone` (API server, scheduler, dag-processor, triggerer) on loopback runs
`airflow backfill create` over two shipped yellow months; a second backfill over the same range reprocesses both
months and changes no table's row count."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs import lakehouse

from .conftest import airflow_cli, airflow_env, table_checksum

DAG_ID = "taxi_monthly_yellow"
MONTHS = ("2019-03", "2019-04")
RUNS_TIMEOUT_S = 1500
TABLES = (lakehouse.BRONZE, lakehouse.TRIPS, lakehouse.QUARANTINE, lakehouse.FEATURES)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _airflow(env, *args) -> str:
    return airflow_cli(env, *args).stdout


def _runs(env) -> dict[str, tuple[str, str]]:
    """{run_id: (logical month, state)} of every run of the DAG."""
    out = _airflow(env, "dags", "list-runs", DAG_ID, "-o", "json")
    runs = json.loads(next(line for line in out.splitlines() if line.startswith("[")))  # warnings share stdout
    return {r["run_id"]: (r["logical_date"][:7], r["state"]) for r in runs}


def _wait_until(what: str, done) -> None:
    deadline = time.monotonic() + RUNS_TIMEOUT_S
    while not done():
        assert time.monotonic() < deadline, f"{what} not reached after {RUNS_TIMEOUT_S} s"
        time.sleep(10)


def _finished(env) -> bool:
    states = [state for _, state in _runs(env).values()]
    return len(states) == len(MONTHS) and all(s in ("success", "failed") for s in states)


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
        "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
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
        deadline = time.monotonic() + 300
        while DAG_ID not in _airflow(env, "dags", "list", "-o", "plain"):
            assert proc.poll() is None, (tmp_path / "standalone.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "dag-processor did not register the DAG in 300 s"
            time.sleep(5)
        yield env, lake
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_backfill_over_two_months_completes_and_a_second_one_changes_no_row_count(airflow_stack):
    env, lake = airflow_stack
    _airflow(env, "dags", "unpause", DAG_ID)
    window = ("--dag-id", DAG_ID, "--from-date", f"{MONTHS[0]}-01", "--to-date", f"{MONTHS[-1]}-01")
    # `features` depends on the past, and Airflow then asks what to do with months that already ran.
    _airflow(env, "backfill", "create", *window, "--reprocess-behavior", "failed")
    _wait_until("both backfill runs finished", lambda: _finished(env))
    runs = _runs(env)
    assert sorted(runs.values()) == [(m, "success") for m in MONTHS], runs
    assert all(run_id.startswith("backfill__") for run_id in runs)  # the unpaused DAG scheduled nothing itself
    first = _counts(lake)
    assert all(n > 0 for k, n in first.items() if not k.startswith("quarantine")), first
    for m in MONTHS:
        assert first[f"silver/trips {m}"] + first[f"quarantine/trips {m}"] == first[f"bronze/trips {m}"]

    # The same range again, reprocessing the completed months: every task reruns, no row count moves.
    features_before = _delta_version(lake / lakehouse.FEATURES.relpath)
    _airflow(env, "backfill", "create", *window, "--reprocess-behavior", "completed")
    _wait_until(
        "second backfill rewrote both months and finished",
        lambda: _delta_version(lake / lakehouse.FEATURES.relpath) >= features_before + 2 and _finished(env),
    )
    assert sorted(_runs(env).values()) == [(m, "success") for m in MONTHS]
    assert _counts(lake) == first
