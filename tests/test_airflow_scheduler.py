"""Real Airflow 3 under its scheduler: `airflow standalone` (API server, scheduler, dag-processor, triggerer) on
loopback, in one scenario (each Spark task is a spark-submit of its own, so every month costs minutes on 2 cores):

- the live calendar: a loopback HTTP server that does not have the TLC-named green file for 2023-01 yet; the
  scheduler's own catch-up run for January waits in its sensor, nothing downstream started, until the file appears,
  then completes by itself; the new month updates the features asset (training's trigger) once;
- a backfill (`airflow backfill create`, the README's command) reprocessing the completed January: every task reruns,
  no table's row count or content moves, and a backfill announces nothing."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from jobs.platform import lakehouse

from .conftest import ROOT, table_checksum
from .processes import airflow_cli, airflow_db, airflow_env, airflow_init, free_port, wait_until

DEFAULT_TIER = "slow"  # tests without a tier marker of their own
SCENARIO_S = 1450  # the whole scenario, so the test's own message (with the diagnosis) comes before pytest's timeout
POLL_S = 3  # how often the test asks Airflow for the runs' states
TABLES = (lakehouse.BRONZE, lakehouse.TRIPS, lakehouse.QUARANTINE, lakehouse.FEATURES)


def _airflow(env, *args) -> str:
    return airflow_cli(env, *args).stdout


def _runs(env, dag_id: str) -> dict[str, tuple[str, str]]:
    """{run_id: (logical month, state)} of every run of the DAG."""
    rows = airflow_db(env, "select run_id, logical_date, state from dag_run where dag_id = ?", dag_id)
    return {run_id: (str(logical)[:7], state) for run_id, logical, state in rows}


def _delta_version(path: Path) -> int:
    from deltalake import DeltaTable

    return DeltaTable(str(path)).version()


@contextlib.contextmanager
def _standalone(tmp_path: Path, dag_id: str, **extra_env: str):
    """`airflow standalone` on a free loopback port until the dag-processor has registered ``dag_id``."""
    lake = tmp_path / "lakehouse"
    port = free_port()
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
        **extra_env,
    }
    airflow_init(env)  # the metadata database and the taxi_spark pool: without the pool no Spark task is scheduled
    log = (tmp_path / "standalone.log").open("w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "airflow"), "standalone"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def registered() -> bool:
            assert proc.poll() is None, (tmp_path / "standalone.log").read_text()[-3000:]
            tables = {r[0] for r in airflow_db(env, "select name from sqlite_master where type = 'table'")}
            return "dag" in tables and bool(airflow_db(env, "select dag_id from dag where dag_id = ?", dag_id))

        wait_until("the dag-processor registered the DAG", registered, 300, POLL_S)
        yield env, lake
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


# ---- the live calendar ------------------------------------------------------------------------------------------
LIVE_DAG = "taxi_monthly_green"
LIVE_ROWS = 20_000  # rows served per month: enough for every rule, small enough for 2 cores


def _tlc_file(src: Path, dst: Path, shift_days: int = 0) -> None:
    """A TLC-named green file: the first LIVE_ROWS trips of a shipped month, its clock moved by ``shift_days``."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(src).slice(0, LIVE_ROWS)
    for name in ("lpep_pickup_datetime", "lpep_dropoff_datetime"):
        moved = pc.add(
            table[name],
            pa.scalar(shift_days * 86_400_000_000, pa.duration("us")).cast(pa.duration(table[name].type.unit)),
        )
        table = table.set_column(table.schema.get_field_index(name), name, moved)
    partial = dst.with_name(f".{dst.name}.partial")
    pq.write_table(table, partial)
    partial.replace(dst)  # published at once, as a web server's upload would be: never half a file


@contextlib.contextmanager
def _file_server(root: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _task_states(env, task_id: str) -> dict[str, str]:
    """{logical month: state} of one task across the live DAG's runs."""
    rows = airflow_db(
        env,
        "select r.logical_date, t.state from task_instance t join dag_run r on t.dag_id = r.dag_id "
        "and t.run_id = r.run_id where t.dag_id = ? and t.task_id = ?",
        LIVE_DAG,
        task_id,
    )
    return {str(logical)[:7]: state for logical, state in rows}


def _announced(env) -> list[str]:
    """The months the features asset (what schedules training) was updated for, in order."""
    rows = airflow_db(
        env,
        "select e.extra from asset_event e join asset a on e.asset_id = a.id where a.uri = ? order by e.id",
        "lakehouse://silver/features/green",
    )
    return [json.loads(extra or "{}").get("month") for (extra,) in rows]


def _task_instances(env) -> list[tuple[str, str, str, int, str]]:
    """(logical month, task, state, try number, run id) of every task instance of the live DAG."""
    rows = airflow_db(
        env,
        "select r.logical_date, t.task_id, t.state, t.try_number, t.run_id from task_instance t "
        "join dag_run r on t.dag_id = r.dag_id and t.run_id = r.run_id where t.dag_id = ? order by "
        "r.logical_date, t.start_date",
        LIVE_DAG,
    )
    return [(str(logical)[:7], task, state, tries, run_id) for logical, task, state, tries, run_id in rows]


def _no_failure(env) -> None:
    """Fails the test at once when a run or a task failed for good: no waiting out the deadline. A task waiting for
    a retry is not a failure (retries are how Airflow recovers, e.g. from a state update lost to sqlite's lock)."""
    broken = [ti for ti in _task_instances(env) if ti[2] in ("failed", "upstream_failed")]
    runs = sorted(_runs(env, LIVE_DAG).values())
    assert not broken and all(state != "failed" for _, state in runs), _diagnosis(env)


def _diagnosis(env) -> str:
    """Every task instance's state, and the log tails of the tasks that did not end well, and of the scheduler."""
    home = Path(env["AIRFLOW_HOME"])
    instances = _task_instances(env)
    lines = ["task instances (month, task, state, try, run id):", *(f"  {ti}" for ti in instances)]
    for _, task, state, _, run_id in instances:
        if state in ("success", "skipped", "up_for_reschedule", None):
            continue
        for log in sorted((home / "logs").glob(f"dag_id={LIVE_DAG}/run_id={run_id}/task_id={task}/attempt=*.log")):
            tail = log.read_text(errors="replace").splitlines()[-40:]
            lines += [f"--- {log.relative_to(home)} (last 40 lines)", *tail]
    standalone = home.parent / "standalone.log"
    if standalone.exists():
        lines += ["--- standalone.log (last 40 lines)", *standalone.read_text(errors="replace").splitlines()[-40:]]
    return "\n".join(lines)


def _counts(lake: Path, month: str) -> dict[str, tuple[int, str]]:
    """(rows, content checksum) of the month in every table the monthly DAG writes (no model: nothing scored)."""
    return {t.relpath: table_checksum(str(lake / t.relpath), "green", month) for t in TABLES}


def test_live_calendar_waits_for_the_months_file_announces_it_once_and_a_backfill_changes_nothing(tmp_path):
    shipped = ROOT / "data" / "tlc" / "green"
    site = tmp_path / "tlc-site"
    site.mkdir()
    (tmp_path / "no-samples").mkdir()
    with _file_server(site) as url:
        calendar = {
            # The scheduler's own run (catch-up) for the data interval of January 2023: one month, since each costs
            # three spark-submits, and a second run would show nothing the first does not.
            "TAXI__AIRFLOW__START_DATE": "2023-01-01",
            "TAXI__AIRFLOW__END_DATE": "2023-01-01",
            "TAXI__AIRFLOW__CATCHUP": "true",
            # Not shorter: when a reschedule comes due before the scheduler has processed the executor's event for
            # the previous check, Airflow marks the task up_for_retry ("finished with state success, but the task
            # instance's state attribute is queued"); measured in CI with 5 s. Its retries recover it anyway.
            "TAXI__AIRFLOW__PUBLICATION_POKE_S": "30",
            # The wait's deadline counts from the month's end on the real clock: 2023 months are years old today.
            "TAXI__AIRFLOW__PUBLICATION_TIMEOUT_DAYS": "36500",
            "TAXI__DATA__SOURCE_URL_TEMPLATE": url + "/{service}_tripdata_{month}.parquet",
            "TAXI__DATA__SAMPLE_DIR": str(tmp_path / "no-samples"),  # the files come from the server only
        }
        with _standalone(tmp_path, LIVE_DAG, **calendar) as (env, lake):
            deadline = time.monotonic() + SCENARIO_S

            def wait(what: str, done) -> None:
                wait_until(
                    what,
                    lambda: _no_failure(env) or done(),
                    deadline - time.monotonic(),
                    POLL_S,
                    lambda: _diagnosis(env),
                )

            _airflow(env, "dags", "unpause", LIVE_DAG)

            def january_waits() -> bool:
                waiting = _task_states(env, "wait_for_publication").get("2023-01") == "up_for_reschedule"
                return waiting and sorted(_runs(env, LIVE_DAG).values()) == [("2023-01", "running")]

            wait("January waiting for its file", january_waits)
            assert _task_states(env, "ingest").get("2023-01") is None  # nothing downstream started
            assert _announced(env) == []

            # The TLC publishes January: the same run goes on by itself.
            _tlc_file(shipped / "green_tripdata_2023-01.parquet", site / "green_tripdata_2023-01.parquet")
            wait("the January run completed", lambda: sorted(_runs(env, LIVE_DAG).values()) == [("2023-01", "success")])
            assert _announced(env) == ["2023-01"]  # the new month once: training's trigger
            assert all(run_id.startswith("scheduled__") for run_id in _runs(env, LIVE_DAG))
            rescheduled = airflow_db(
                env,
                "select count(*) from task_reschedule r join task_instance t on r.ti_id = "
                "t.id where t.dag_id = ? and t.task_id = 'wait_for_publication'",
                LIVE_DAG,
            )
            assert rescheduled[0][0] >= 1  # the sensor gave its slot back while it waited (reschedule mode)
            january = _counts(lake, "2023-01")
            assert january["bronze/trips"][0] == LIVE_ROWS, january
            assert january["silver/trips"][0] + january["quarantine/trips"][0] == LIVE_ROWS, january
            assert january["silver/features"][0] > 0

            # A backfill reprocessing the completed January (the README's command): every task reruns and rewrites
            # the month, no row or value changes, and a backfill starts no training.
            features_before = _delta_version(lake / lakehouse.FEATURES.relpath)
            january_only = ("--from-date", "2023-01-01", "--to-date", "2023-01-01")
            created = airflow_cli(
                env,
                "backfill",
                "create",
                "--dag-id",
                LIVE_DAG,
                *january_only,
                "--reprocess-behavior",
                "completed",
                check=False,
            )
            # One backfill, whatever the CLI said: an attempt that met sqlite's lock after its commit is retried and
            # then told that the backfill it created is running.
            backfills = airflow_db(env, "select id from backfill where dag_id = ?", LIVE_DAG)
            assert len(backfills) == 1, created.stderr[-3000:]

            def backfill_finished() -> bool:
                backfills = airflow_db(env, "select completed_at from backfill where dag_id = ?", LIVE_DAG)
                return bool(backfills) and all(done is not None for (done,) in backfills)

            wait("the backfill finished", backfill_finished)
            runs = _runs(env, LIVE_DAG)
            assert sorted(runs.values()) == [("2023-01", "success")], runs
            reprocessed = airflow_db(
                env, "select run_type from dag_run where dag_id = ? and backfill_id is not null", LIVE_DAG
            )
            # January's run, cleared and rerun by the backfill (else: what the backfill said about each date)
            assert reprocessed == [("backfill",)], airflow_db(env, "select * from backfill_dag_run")
            assert _delta_version(lake / lakehouse.FEATURES.relpath) > features_before  # the month was rewritten
            assert _task_states(env, "announce_new_month")["2023-01"] == "skipped"
            assert _announced(env) == ["2023-01"]
            assert _counts(lake, "2023-01") == january
    shutil.rmtree(site)
