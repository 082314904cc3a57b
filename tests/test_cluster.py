"""A real Spark standalone cluster (master + 2 workers on loopback), driven the way a deployment drives it: `airflow
dags test` of the monthly DAG with `spark_default` pointing at the cluster runs ingest -> validate -> features ->
score through spark-submit, with one worker killed while the features job holds an executor on each; its tables equal
what the same jobs wrote in local mode (the golden lakehouse): a worker lost mid-job does not change the result."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.features import job as features
from jobs.platform import cluster, lakehouse

from .conftest import copy_lakehouse, settings_for, table_checksum
from .processes import airflow_env, airflow_init, airflow_task_states

DEFAULT_TIER = "slow"  # tests without a tier marker of their own
MASTER = "spark://127.0.0.1:7077"
DAG = "taxi_monthly_green"
FEATURES_STARTED = "stage=features service=green month=2023-01 | history window"


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    cluster.stop()
    info = cluster.start(workers=2, cores=1, memory="2g")
    yield info
    cluster.stop()


MEMORY = {"TAXI__SPARK__CONF__spark.executor.memory": "1g", "TAXI__SPARK__CONF__spark.driver.memory": "2g"}


@pytest.fixture(scope="module")
def cluster_month(standalone, tmp_path_factory):
    """`airflow dags test` at 2023-02-01 (a manual run stands for the month that ended there: 2023-01) on the cluster,
    into a new lakehouse, with worker-1 killed (SIGKILL: the worker and its executor die without notice) while the
    features job holds an executor on each worker: (lakehouse, the run's log)."""
    tmp = tmp_path_factory.mktemp("cluster")
    lake = tmp / "lakehouse"
    env = {
        **airflow_env(tmp, lake),
        **MEMORY,
        "AIRFLOW_CONN_SPARK_DEFAULT": MASTER,
        "TAXI__SPARK__MASTER": MASTER,
        "SPARK_DRIVER_MEMORY": "2g",
    }
    airflow_init(env)
    out = tmp / "dags-test.log"
    with out.open("w") as sink:
        run = subprocess.Popen(
            [str(Path(sys.executable).parent / "airflow"), "dags", "test", DAG, "2023-02-01"],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 900
            # Until the features job has read its input (its first log line) with an executor on each worker: its
            # stages run on both when the worker dies.
            while not (_cores_in_use() >= 2 and FEATURES_STARTED in out.read_text()):
                assert run.poll() is None, f"the DAG run ended before features ran: {out.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "the features job never got executors on both workers"
                time.sleep(0.5)
            cluster.kill("worker-1", signal.SIGKILL)
            killed_during = airflow_task_states(env, DAG).get("features")
            rc = run.wait(timeout=1500)
        finally:
            if run.poll() is None:
                run.kill()
    log = out.read_text()
    assert rc == 0, log[-4000:]
    assert killed_during == "running", "the features job ended before the worker could be killed"
    assert "Lost executor" in log  # the driver saw its executor on worker-1 go, and finished on the other one
    states = airflow_task_states(env, DAG)
    assert set(states.values()) == {"success"} and len(states) == 6, states  # the file was there: no wait
    return lake, log


def test_dags_test_on_the_cluster_writes_what_local_mode_wrote(spark, golden, cluster_month, tmp_path):
    lake, log = cluster_month
    for command in ("ingest", "validate", "features", "score"):
        assert f'{{"command": "{command}"' in log
    assert f"--master {MASTER}" in log
    assert "--conf spark.driver.defaultJavaOptions=-XX:SharedArchiveFile=" in log  # the drivers map the class archive
    assert len(_master_status()["completedapps"]) >= 3  # the Spark jobs ran as applications of the cluster
    for table in (lakehouse.BRONZE, lakehouse.TRIPS, lakehouse.QUARANTINE):
        on_cluster = table_checksum(str(lake / table.relpath), "green", "2023-01")
        local = table_checksum(table.path(golden.settings), "green", "2023-01")
        assert on_cluster == local, table.relpath
    # The golden 2023-01 features read 2022-01/02 as history, which this lakehouse lacks: local mode featurises a
    # copy of the cluster's lakehouse instead, from the same validated rows.
    local_mode = copy_lakehouse(settings_for(lake), tmp_path / "local")
    features.run(spark, local_mode, "green", "2023-01")
    on_cluster = table_checksum(str(lake / lakehouse.FEATURES.relpath), "green", "2023-01")
    assert on_cluster == table_checksum(lakehouse.FEATURES.path(local_mode), "green", "2023-01")
    assert on_cluster[0] == 67933
    assert table_checksum(str(lake / lakehouse.BRONZE.relpath), "green", "2023-01")[0] == 68211
    assert '"skipped": true' in log  # no model in the run's new registry: scoring says so and succeeds


def _master_status() -> dict:
    import json
    import urllib.request

    with urllib.request.urlopen("http://127.0.0.1:18080/json/", timeout=2) as r:
        return json.load(r)


def _cores_in_use() -> int:
    return sum(app.get("cores", 0) for app in _master_status().get("activeapps", []))
