"""Many drivers writing one Delta table on object storage (writes.s3_log_store): the refusal of the single-driver
store where several jobs may run at once (unit), the DynamoDB log store's JAR built from its source (spark), and on
moto's S3 + DynamoDB server (slow): four driver processes racing for the same log versions lose nothing through the
DynamoDB store (the single-driver store's losses are counted as the control), and a driver killed after winning a
version leaves the table readable at the version before, its commit finished by the next writer."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import concurrent_writers as cw
from jobs.platform import log_store
from jobs.platform.config import ConfigError, load_settings

from .conftest import ROOT

DEFAULT_TIER = "slow"
S3 = {"TAXI_LAKEHOUSE": "s3a://bucket/lake", "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}


def s3_settings(**env: str):
    return load_settings(env={**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **S3, **env})


@pytest.mark.unit
def test_the_single_driver_store_is_refused_where_several_jobs_may_write_at_once():
    with pytest.raises(ConfigError, match=r"writes.s3_log_store is single-driver but airflow.spark_pool_slots is 2"):
        log_store.check_writers(
            s3_settings(TAXI__WRITES__S3_LOG_STORE="single-driver", TAXI__AIRFLOW__SPARK_POOL_SLOTS="2")
        )
    log_store.check_writers(s3_settings(TAXI__WRITES__S3_LOG_STORE="single-driver"))  # one job at a time: allowed
    log_store.check_writers(s3_settings(TAXI__AIRFLOW__SPARK_POOL_SLOTS="2"))  # dynamodb: any number
    local = load_settings(env={**os.environ, "TAXI__WRITES__S3_LOG_STORE": "single-driver"})
    local.airflow.spark_pool_slots = 2
    log_store.check_writers(local)
    assert log_store.spark_conf(local) == {}  # a local lakehouse keeps Delta's local log store


@pytest.mark.unit
def test_the_dynamodb_endpoint_and_region_come_from_config_then_the_aws_environment(monkeypatch):
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(key, raising=False)
    conf = log_store.spark_conf(s3_settings())
    assert conf["spark.delta.logStore.s3a.impl"] == "taxi.delta.DynamoDBLogStore"
    assert conf[f"{log_store.HADOOP_PREFIX}endpoint"] == "" and conf[f"{log_store.HADOOP_PREFIX}region"] == "us-east-1"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "http://dynamodb:5000")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    conf = log_store.spark_conf(s3_settings())
    assert conf[f"{log_store.HADOOP_PREFIX}endpoint"] == "http://dynamodb:5000"  # the service's own variable first
    assert conf[f"{log_store.HADOOP_PREFIX}region"] == "eu-west-1"
    conf = log_store.spark_conf(s3_settings(TAXI__WRITES__DYNAMODB_ENDPOINT="http://ddb:8000"))
    assert conf[f"{log_store.HADOOP_PREFIX}endpoint"] == "http://ddb:8000" and conf[f"{log_store.HADOOP_PREFIX}table"]
    single = log_store.spark_conf(s3_settings(TAXI__WRITES__S3_LOG_STORE="single-driver"))
    assert single == {"spark.delta.logStore.s3a.impl": log_store.SINGLE_DRIVER_CLASS}


def test_the_log_store_jar_is_compiled_once_from_its_source_with_the_same_bytes():
    """`taxi jars --object-store` (its own process: it may resolve the S3 connector first) lists the log store's
    JAR; a rebuild from the same source and JARs gives the same bytes."""
    import zipfile

    from .processes import taxi_bin

    out = subprocess.run([taxi_bin(), "jars", "--object-store"], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    jars = out.stdout.strip().splitlines()[-1].split(",")
    built = [j for j in jars if "taxi-delta-log-store-" in j]
    assert len(built) == 1 and jars[-1] == built[0], jars
    with zipfile.ZipFile(built[0]) as z:
        assert "taxi/delta/DynamoDBLogStore.class" in z.namelist()
    first = open(built[0], "rb").read()
    os.remove(built[0])
    assert open(log_store.ensure_jar(load_settings(), jars[:-1]), "rb").read() == first  # reproducible


def test_drivers_starting_at_once_on_a_cold_jar_cache_resolve_it_once_and_all_start(tmp_path):
    """Three `taxi jars --object-store` at once on a cache with no manifest, no S3 connector and no compiled log
    store (a fresh host whose first jobs start together): one resolves and compiles, the others wait for it, and
    all three list the same JARs."""
    from .processes import taxi_bin

    cache = tmp_path / "jars"
    # Ivy's files for the configured packages; the S3 connector's fetched again, as on a host that never used it.
    shutil.copytree(Path(load_settings().spark.jar_cache) / "ivy" / "cache", cache / "ivy" / "cache")
    for connector in ("com.amazonaws", "org.apache.hadoop"):
        shutil.rmtree(cache / "ivy" / "cache" / connector)
    env = {**os.environ, "TAXI__SPARK__JAR_CACHE": str(cache)}
    procs = [
        subprocess.Popen(
            [taxi_bin(), "jars", "--object-store"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in outs]
    listed = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(listed) == 1, listed
    assert len(list(cache.glob("manifest-*.json"))) == 1 and len(list(cache.glob("taxi-delta-log-store-*.jar"))) == 1


# ---- on moto's S3 + DynamoDB server ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def aws():
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    with cw.moto_server() as env:
        yield {**base, **env}


def test_four_drivers_racing_for_each_version_lose_no_commit_through_dynamodb(tmp_path):
    """The bench script as a user runs it (`--moto`: its own S3 + DynamoDB server on loopback)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    cmd = [sys.executable, str(ROOT / "bench" / "concurrent_writers.py"), "--moto", "--writers", "4", "--rounds", "5"]
    out = subprocess.run([*cmd, "--out", str(tmp_path / "result.json")], env=base, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    print(out.stdout.strip().splitlines()[-1])
    result = json.loads((tmp_path / "result.json").read_text())
    ddb = result["stores"]["dynamodb"]
    assert ddb["commits_expected"] == 1 + 4 * 5
    assert ddb["commits_lost"] == [] and ddb["commits_found"] == 21
    assert ddb["versions"] == 21 and ddb["versions_contiguous"]
    assert ddb["partitions_wrong"] == {}  # every month holds exactly its writer's last round
    assert ddb["log_entries"] == {"entries": 21, "complete": 21}  # every commit went through DynamoDB, finished
    assert all(not r["unconfirmed"] for r in ddb["reports"])
    # The control: whatever it lost is accounted for (found + lost = expected), and reported by the bench.
    single = result["stores"]["single-driver"]
    assert single["commits_found"] + len(single["commits_lost"]) == single["commits_expected"] == 21
    assert single["log_entries"] is None
    assert result["commit_seconds_ratio"] > 0


def test_a_driver_killed_after_winning_a_version_leaves_it_for_the_next_writer_to_finish(aws, tmp_path):
    from jobs.platform import storage

    env = {**aws, "TAXI__WRITES__S3_LOG_STORE": "dynamodb", "TAXI__SPARK__MASTER": "local[1]"}
    env["TAXI__SPARK__CONF__spark.driver.memory"] = "1g"
    settings = load_settings(env=env)
    uri = cw.table_uri(settings, "dynamodb-killed")

    def writer(first_round: int, extra: dict[str, str] | None = None) -> subprocess.Popen:
        barrier = tmp_path / f"barrier-{first_round}"
        barrier.mkdir()
        args = ["--writer", "0", "--writers", "1", "--rounds", "1", "--first-round", str(first_round)]
        args += ["--store", "dynamodb-killed", "--barrier", str(barrier)]
        return subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "concurrent_writers.py"), *args],
            env={**env, **(extra or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    first = writer(0)  # the table (version 0) and round 0 (version 1)
    assert first.wait(timeout=600) == 0, first.stderr.read()[-3000:]
    paused = writer(1, {"TAXI__SPARK__CONF__spark.hadoop.taxi.delta.dynamodb.pause_after_claim_ms": "600000"})
    deadline = time.monotonic() + 600
    while cw.log_entries(settings, uri, env)["entries"] < 3:  # it has won version 2 and is paused before 2.json
        assert paused.poll() is None, paused.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(paused.pid, signal.SIGKILL)
    paused.wait()
    assert cw.log_entries(settings, uri, env) == {"entries": 3, "complete": 2}
    with cw._environment(env):
        table = storage.delta_table(uri)  # a reader that knows nothing of DynamoDB: the version before
        assert table.version() == 1
        assert set(table.to_pandas(columns=["round"])["round"]) == {0}

    last = writer(2)  # lists the log, finds version 2 unfinished, finishes it, then commits version 3
    assert last.wait(timeout=600) == 0, last.stderr.read()[-3000:]
    assert cw.log_entries(settings, uri, env) == {"entries": 4, "complete": 4}
    with cw._environment(env):
        table = storage.delta_table(uri)
        history = {h["version"]: h.get("userMetadata") for h in table.history()}
        assert history == {0: "create", 1: "w0-r0", 2: "w0-r1", 3: "w0-r2"}  # the killed driver's commit is kept
        assert set(table.to_pandas(columns=["round"])["round"]) == {2}


def test_log_store_init_creates_the_table_once_with_the_layout_the_class_reads(aws):
    import boto3

    from .processes import taxi_bin

    env = {**aws, "TAXI__WRITES__DYNAMODB_TABLE": "taxi_init_check"}
    runs = [subprocess.run([taxi_bin(), "log-store", "init"], env=env, capture_output=True, text=True) for _ in "ab"]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr[-2000:]
    assert [json.loads(r.stdout.strip().splitlines()[-1])["created"] for r in runs] == [True, False]  # idempotent
    client = boto3.client("dynamodb", endpoint_url=aws["AWS_ENDPOINT_URL"], **cw._boto(aws))
    table = client.describe_table(TableName="taxi_init_check")["Table"]
    assert {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]} == {"tablePath": "HASH", "fileName": "RANGE"}
    ttl = client.describe_time_to_live(TableName="taxi_init_check")["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "expireTime" and ttl["TimeToLiveStatus"] == "ENABLED"


def test_a_lease_waits_for_a_live_holder_and_a_dead_holders_lease_expires(aws):
    """The reports' lease (jobs.platform.lease) on DynamoDB: a second holder is refused while the first lives,
    naming it; once the first is killed, the lease is free within writes.lease_s."""
    from jobs.platform import lease
    from jobs.platform.errors import TaxiError

    env = {**aws, "TAXI__WRITES__LEASE_S": "10", "TAXI__WRITES__LEASE_WAIT_S": "2"}
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, pathlib; sys.path.insert(0, sys.argv[1]); from jobs.platform import lease; "
            "from jobs.platform.config import load_settings; "
            "cm = lease.held(load_settings(), 'reports/check', pathlib.Path('/nonexistent/lock')); cm.__enter__(); "
            "print('held', flush=True); time.sleep(600)",
            str(ROOT),
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        settings = load_settings(env=env)
        with cw._environment(env):
            with pytest.raises(TaxiError, match=r"waited 2 s for the lease on .*reports/check \(held by .*:\d+:"):
                with lease.held(settings, "reports/check", ROOT / "unused.lock"):
                    pass
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait()
            settings.writes.lease_wait_s = 60
            start = time.monotonic()
            with lease.held(settings, "reports/check", ROOT / "unused.lock") as hold:
                waited = time.monotonic() - start
                hold.check()
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
    assert 3 <= waited <= 15, waited  # until the dead holder's 10 s lease ran out, not the 60 s wait
