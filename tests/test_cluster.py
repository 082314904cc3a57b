"""A real Spark standalone cluster (master + 2 workers on loopback): same tables as local mode; a worker lost
mid-job does not change the result."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from jobs import cluster, lakehouse

from .conftest import job_env, table_checksum, taxi_bin

DEFAULT_TIER = "slow"  # tests without a tier marker of their own
MASTER = "spark://127.0.0.1:7077"


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    cluster.stop()
    info = cluster.start(workers=2, cores=1, memory="2g")
    yield info
    cluster.stop()


def _taxi(lakehouse_dir: Path, *args: str, **popen) -> subprocess.Popen:
    memory = {"TAXI__SPARK__CONF__spark.executor.memory": "1g", "TAXI__SPARK__CONF__spark.driver.memory": "2g"}
    env = job_env(lakehouse_dir, TAXI__SPARK__MASTER=MASTER, **memory)
    return subprocess.Popen([taxi_bin(), *args], env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            **popen)  # fmt: skip


def _ok(proc: subprocess.Popen, timeout: int = 900) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return err


@pytest.fixture(scope="module")
def cluster_month(standalone, tmp_path_factory):
    lake = tmp_path_factory.mktemp("cluster-lakehouse")
    _ok(_taxi(lake, "run-month", "--service", "green", "--month", "2023-01", "--skip-score"))
    return lake


def test_cluster_pipeline_matches_local_mode(golden, cluster_month):
    for table in (lakehouse.BRONZE, lakehouse.TRIPS, lakehouse.QUARANTINE, lakehouse.FEATURES):
        on_cluster = table_checksum(str(cluster_month / table.relpath), "green", "2023-01")
        local = table_checksum(table.path(golden.settings), "green", "2023-01")
        assert on_cluster == local, table.relpath
    assert table_checksum(str(cluster_month / lakehouse.BRONZE.relpath), "green", "2023-01")[0] == 68211


def _cores_in_use() -> int:
    import json
    import urllib.request

    with urllib.request.urlopen("http://127.0.0.1:18080/json/", timeout=2) as r:
        return sum(app.get("cores", 0) for app in json.load(r).get("activeapps", []))


def test_job_survives_losing_a_worker(cluster_month):
    before = table_checksum(str(cluster_month / lakehouse.FEATURES.relpath), "green", "2023-01")
    proc = _taxi(cluster_month, "features", "--service", "green", "--month", "2023-01")
    deadline = time.monotonic() + 120
    while _cores_in_use() < 2:  # wait until the job holds an executor on each worker
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the job never got executors on both workers"
        time.sleep(0.5)
    time.sleep(2)
    assert proc.poll() is None, "job finished before the worker could be killed"
    cluster.kill("worker-1", signal.SIGKILL)  # the worker and its executor die without notice
    err = _ok(proc)
    assert "done rows=" in err
    assert table_checksum(str(cluster_month / lakehouse.FEATURES.relpath), "green", "2023-01") == before
