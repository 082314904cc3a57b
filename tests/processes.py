"""Helpers for the tests that start processes: `taxi` commands and Airflow in child processes, beeline, headless
Chromium with the network off, free loopback ports, bounded waits."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import ONE_JOB_DRIVER, ROOT


def wait_until(what: str, done, timeout_s: float, interval_s: float = 2.0, describe=None) -> None:
    """Poll ``done()`` every ``interval_s`` until it is true; fail naming ``what`` after ``timeout_s``, with what
    ``describe()`` says about the state things were left in."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() >= deadline:
            state = f"\n{describe()}" if describe else ""
            raise AssertionError(f"{what} not reached after {timeout_s:.0f} s{state}")
        time.sleep(interval_s)


def require_chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI (.ci/run installs it)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return path


def chromium_dom(url: str, budget_ms: int = 5000) -> str:
    """The DOM of ``url`` after headless Chromium ran its scripts, with every network name unresolvable."""
    out = subprocess.run(
        [
            require_chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout


_PROBE = """<html><body><pre id="out">not loaded</pre><iframe id="f" src="%s" width="1280" height="900"></iframe>
<script>
var f = document.getElementById("f");
f.onload = function () { setTimeout(function () {
  var d = f.contentDocument, w = f.contentWindow;
  document.getElementById("out").textContent = JSON.stringify({
    table_rows: d.querySelectorAll("table tbody tr[data-index]").length,
    tables: d.querySelectorAll("table").length,
    body_font: w.getComputedStyle(d.body).fontFamily,
    remote: w.performance.getEntriesByType("resource").map(function (e) { return e.name; })
             .filter(function (n) { return /^https?:/.test(n); }),
    text: d.body.innerText.slice(0, 50000)});
}, 1500); };
</script></body></html>"""


def chromium_probe(page: Path, tmp_path: Path) -> dict[str, Any]:
    """Open ``page`` in headless Chromium with every network name unresolvable and report what rendered: rows that
    bootstrap-table filled in, the body's computed font (Bootstrap's stack vs the browser default), the network
    loads the page attempted, and its visible text."""
    import html

    harness = tmp_path / f"probe-{page.stem}.html"
    harness.write_text(_PROBE % html.escape(page.as_uri()))
    out = subprocess.run(
        [
            require_chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--allow-file-access-from-files",
            "--virtual-time-budget=10000",
            "--dump-dom",
            harness.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    start = out.stdout.index('<pre id="out">') + len('<pre id="out">')
    return json.loads(html.unescape(out.stdout[start : out.stdout.index("</pre>", start)]))


def job_env(lakehouse: Path, **extra: str) -> dict[str, str]:
    """Environment for a `taxi` (or Airflow) subprocess on ``lakehouse``, its drivers on C1 (ONE_JOB_DRIVER). MLflow
    exports the tracking URI of the last ``set_tracking_uri`` into this process's environment; a child must find its
    own lakehouse's store."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    return {**env, "TAXI_LAKEHOUSE": str(lakehouse), "TAXI__SPARK__DRIVER_JAVA_OPTIONS": ONE_JOB_DRIVER, **extra}


def free_port() -> int:
    """A free TCP port on the loopback interface, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def beeline(port: int, script: str, tmp_path: Path) -> str:
    """Run ``script`` against `taxi sql-server` over JDBC with the beeline shipped in pyspark (csv2 output); its
    `!columns` command is the JDBC getColumns call BI tools use."""
    from jobs.platform.cluster import spark_home

    path = tmp_path / "query.sql"
    path.write_text(script)
    out = subprocess.run(
        [
            str(spark_home() / "bin" / "beeline"),
            "-u",
            f"jdbc:hive2://127.0.0.1:{port}/taxi",
            "-n",
            "analyst",
            "--outputformat=csv2",
            "--silent=true",
            "-f",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


def taxi_bin() -> str:
    return str(Path(sys.executable).parent / "taxi")


def airflow_env(tmp_path: Path, lakehouse: Path) -> dict[str, str]:
    """Environment for Airflow CLI subprocesses: own AIRFLOW_HOME (sqlite), project DAGs, local Spark, JARs."""
    from jobs.platform.class_archive import driver_java_options
    from jobs.platform.config import load_settings
    from jobs.platform.spark import cached_jars

    venv_bin = str(Path(sys.executable).parent)
    return {
        **job_env(lakehouse),
        "PATH": f"{venv_bin}:{os.environ['PATH']}",
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "false",
        "AIRFLOW_CONN_SPARK_DEFAULT": "spark://local%5B2%5D",
        "AIRFLOW_VAR_TAXI_JARS": ",".join(cached_jars(load_settings()) or []),
        "AIRFLOW_VAR_TAXI_DRIVER_JAVA_OPTIONS": driver_java_options(load_settings(env=job_env(lakehouse))),
    }


def airflow_init(env: dict[str, str]) -> str:
    """`taxi airflow-init` (db migrate + the Spark pool) as a deployment runs it; its JSON summary line."""
    command = [sys.executable, "-m", "jobs.entry.cli", "airflow-init"]
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"taxi airflow-init: {out.stderr[-3000:]}"
    return out.stdout.strip().splitlines()[-1]


def airflow_db(env: dict[str, str], sql: str, *params) -> list[tuple]:
    """Read Airflow's metadata database directly: polling through the `airflow` CLI would start a Python process
    that imports Airflow every few seconds, and on 2 cores that starves the Spark jobs under test."""
    with sqlite3.connect(f"file:{env['AIRFLOW_HOME']}/airflow.db?mode=ro", uri=True, timeout=30) as con:
        return con.execute(sql, params).fetchall()


def airflow_task_states(env: dict[str, str], dag_id: str) -> dict[str, str]:
    """{task_id: state} in the DAG's latest run."""
    rows = airflow_db(
        env,
        "select task_id, state from task_instance where run_id = (select run_id from dag_run "
        "where dag_id = ? order by id desc limit 1) and dag_id = ?",
        dag_id,
        dag_id,
    )
    return dict(rows)


def airflow_cli(env: dict[str, str], *args: str, timeout: int = 300, check: bool = True):
    """Run one `airflow` CLI command. Retried while sqlite says "database is locked": the test Airflow runs on sqlite,
    whose single writer lock a busy scheduler or dag-processor can hold past the CLI's 5 s busy timeout."""
    for attempt in range(6):
        out = subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if out.returncode == 0 or "database is locked" not in out.stderr:
            break
        time.sleep(2 * (attempt + 1))
    if check:
        assert out.returncode == 0, f"airflow {' '.join(args)}: {out.stderr[-3000:]}"
    return out
