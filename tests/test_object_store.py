"""The lakehouse on S3-compatible object storage: moto's S3 server and an MLflow server whose artifacts go to the same
bucket, both started here on the loopback interface; the jobs run in their own processes with s3a:// URIs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.platform import lakehouse, storage

from .conftest import GOLDEN_GREEN, GOLDEN_WEEK, ROOT, copy_lakehouse, frame_checksum, partition_rows, table_checksum
from .processes import beeline, free_port, job_env, taxi_bin, wait_until

DEFAULT_TIER = "slow"  # tests without a tier marker of their own
BUCKET = "taxi-lake"
KILL_ROWS = 400_000  # a write of many seconds on local[1]: the kill lands while it is under way
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "taxi-test", "AWS_SECRET_ACCESS_KEY": "taxi-test-secret", "AWS_REGION": "us-east-1"}


def _serve(cmd: list[str], port: int, log: Path, env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    def answers() -> bool:
        assert proc.poll() is None, f"{cmd[0]} exited: {log.read_text()[-2000:]}"
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(f"{Path(cmd[0]).name} on port {port}", answers, timeout_s=120, interval_s=0.5)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def object_store(tmp_path_factory):
    """(environment for a job on s3a://taxi-lake/lake, boto3 client): moto's S3 server and an MLflow server."""
    import boto3

    tmp = tmp_path_factory.mktemp("object-store")
    s3_port, mlflow_port = free_port(), free_port()
    aws = {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}"}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    servers = [
        _serve(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
            s3_port,
            tmp / "moto.log",
            base,
        )
    ]
    try:
        client = boto3.client(
            "s3",
            endpoint_url=aws["AWS_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id=aws["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
        )
        client.create_bucket(Bucket=BUCKET)
        servers.append(
            _serve(
                [
                    str(Path(sys.executable).parent / "mlflow"),
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(mlflow_port),
                    "--backend-store-uri",
                    f"sqlite:///{tmp / 'mlflow.db'}",
                    "--artifacts-destination",
                    f"s3://{BUCKET}/mlflow",
                    "--workers",
                    "1",
                ],
                mlflow_port,
                tmp / "mlflow.log",
                {**base, **aws, "MLFLOW_S3_ENDPOINT_URL": aws["AWS_ENDPOINT_URL"]},
            )
        )
        env = {
            **job_env(Path("unused")),
            **aws,
            "TAXI_LAKEHOUSE": f"s3a://{BUCKET}/lake",
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        }
        with pytest.MonkeyPatch.context() as mp:  # this process reads the bucket too (delta-rs, the layer's checks)
            for key, value in aws.items():
                mp.setenv(key, value)
            yield env, client
    finally:
        for proc in reversed(servers):
            _stop(proc)


def _keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _project_files() -> dict[str, int]:
    """The project folder's files (outside the environment, the JAR cache and tool caches) and their mtimes."""
    skip = {".git", ".venv", ".cache", "__pycache__", ".pytest_cache", ".ruff_cache"}
    found = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip]
        for name in files:
            path = Path(folder) / name
            found[str(path.relative_to(ROOT))] = path.stat().st_mtime_ns
    return found


def _object_store_settings(env):
    from jobs.platform.config import load_settings

    return load_settings(env=env)


def _checksum(settings, table, service: str, month: str) -> tuple[int, str]:
    """The partition's checksum as read from the bucket (delta-rs with storage options)."""
    return frame_checksum(lakehouse.query(settings, table, filters=[("service", "=", service), ("month", "=", month)]))


NEW_MONTH = GOLDEN_GREEN[-1]  # lands on the object store; the months before it are there already


def _seed(golden, client, tmp_path: Path) -> None:
    """The golden lakehouse as it stood before NEW_MONTH landed, put into the bucket: the earlier months' raw files,
    tables and validation runs; no model, score, drift table or report (the jobs under test write those)."""
    from deltalake import DeltaTable

    local = copy_lakehouse(golden.settings, tmp_path / "seed").lakehouse
    for table in (
        lakehouse.BRONZE,
        lakehouse.TRIPS,
        lakehouse.QUARANTINE,
        lakehouse.FEATURES,
        lakehouse.VALIDATION_RUNS,
    ):
        DeltaTable(str(local / table.relpath)).delete(f"service = 'green' AND month = '{NEW_MONTH}'")
    for later in ("mlflow", "gold", "monitoring/drift", "reports", f"raw/green/{NEW_MONTH}"):
        shutil.rmtree(local / later)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        client.upload_file(str(path), BUCKET, f"lake/{path.relative_to(local).as_posix()}")


def test_the_pipeline_on_an_object_store_lakehouse_gives_what_the_local_one_gives(golden, object_store, tmp_path):
    """The golden sequence on s3a:// from its last month on (ingest -> validate -> features of 2023-02, train,
    score, monitor), in a process of its own, over the earlier months put into the bucket: the same rows,
    candidates and predictions as the local golden lakehouse, and nothing written to the project."""
    import boto3

    env, client = object_store
    _seed(golden, client, tmp_path)
    before = _project_files()
    # The tests' own settings (small models...), then the object store's, which importing conftest would override.
    script = (
        f"import json, os, sys; sys.path.insert(0, {str(ROOT)!r}); from tests.conftest import build_golden; "
        "os.environ.update(json.loads(os.environ['TAXI_TEST_OBJECT_STORE'])); "
        "from jobs.platform.config import load_settings; from jobs.platform.spark import get_spark; "
        "s = load_settings(); "
        f"print(json.dumps(build_golden(get_spark(s), s, months=[{NEW_MONTH!r}], weeks=[{GOLDEN_WEEK!r}])))"
    )
    store = {k: env[k] for k in ("TAXI_LAKEHOUSE", "MLFLOW_TRACKING_URI")}
    # One driver for the whole sequence, training included: long-lived like this process's session, so it keeps the
    # optimising JIT (an empty value clears the tests' one-job driver options).
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1500,
        env={**env, "TAXI_TEST_OBJECT_STORE": json.dumps(store), "TAXI__SPARK__DRIVER_JAVA_OPTIONS": ""},
    )
    assert out.returncode == 0, out.stderr[-4000:]
    summaries = json.loads(out.stdout.strip().splitlines()[-1])
    s3 = _object_store_settings(env)
    local = golden.settings

    for key in ("rows_total", "rows_valid", "rows_quarantined", "verdict"):
        assert summaries[f"validate {NEW_MONTH}"][key] == golden.summaries[f"validate {NEW_MONTH}"][key], key
    overview = client.get_object(Bucket=BUCKET, Key="lake/reports/validation/index.html")["Body"].read().decode()
    assert all(month in overview for month in GOLDEN_GREEN)  # the seeded runs and the new one, from the bucket
    for month in GOLDEN_GREEN:
        for table in (lakehouse.BRONZE, lakehouse.TRIPS, lakehouse.QUARANTINE, lakehouse.FEATURES):
            assert _checksum(s3, table, "green", month)[0] == table_checksum(table.path(local), "green", month)[0]
    # The same model choice and the same predictions, read back from the bucket by delta-rs with storage options.
    assert summaries["train"]["candidates"] == golden.summaries["train"]["candidates"]  # same RMSEs, 4 decimals
    assert summaries["train"]["bakeoff"].startswith(f"s3a://{BUCKET}/lake/reports/bakeoff/green/")
    assert _checksum(s3, lakehouse.PREDICTIONS, "green", "2023-02") == table_checksum(
        lakehouse.PREDICTIONS.path(local), "green", "2023-02"
    )
    assert summaries["monitor"]["verdict"] == golden.summaries["monitor"]["verdict"]

    # BI tools over the bucket: the SQL endpoint's views read the object-store tables.
    port, sql_env = free_port(), {**env, "TAXI__SPARK__MASTER": "local[1]"}
    sql_server = [taxi_bin(), "sql-server"]
    started = subprocess.run(
        [*sql_server, "start", "--port", str(port)], env=sql_env, capture_output=True, text=True, timeout=400
    )
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        out = beeline(
            port,
            "SELECT month, count(*) AS n, round(avg(predicted_duration_min), 6) AS mean "
            "FROM taxi.predictions WHERE month = '2023-02' GROUP BY month;\n",
            tmp_path,
        )
    finally:
        subprocess.run([*sql_server, "stop", "--port", str(port)], env=sql_env, capture_output=True, timeout=120)
    local_preds = partition_rows(local, lakehouse.PREDICTIONS, "green", "2023-02", ["predicted_duration_min"])
    row = next((line for line in out.splitlines() if line.startswith("2023-02,")), None)
    assert row is not None, out[-2000:]
    _, n, mean = row.split(",")
    assert int(n) == len(local_preds)
    assert float(mean) == pytest.approx(local_preds["predicted_duration_min"].mean(), abs=1e-5)

    keys = _keys(client, "lake/")
    for prefix in (
        "lake/raw/green/2023-02/green_tripdata_2023-02.parquet",
        "lake/raw/green/2023-02/_accepted/",
        "lake/gold/predictions/_delta_log/",
        "lake/monitoring/drift/_delta_log/",
        "lake/reports/validation/index.html",
        "lake/reports/validation/gx/uncommitted/data_docs/local_site/",
        "lake/reports/drift/green/2023-W06.html",
        "lake/reports/bakeoff/green/",
    ):
        assert any(k.startswith(prefix) for k in keys), f"nothing at s3://{BUCKET}/{prefix}"
    assert not any("/_staging/" in k for k in keys)  # every staged file was landed or discarded
    assert summaries["validate 2023-02"]["data_docs"].startswith(f"s3a://{BUCKET}/lake/reports/validation/")
    assert any(k.startswith("mlflow/") and k.endswith("MLmodel") for k in _keys(client, "mlflow/"))  # models too
    # Every commit went through the DynamoDB log store (writes.s3_log_store's default), each one finished.
    ddb = boto3.client(
        "dynamodb",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    entries = ddb.query(
        TableName="taxi_delta_log",
        KeyConditionExpression="tablePath = :t",
        ExpressionAttributeValues={":t": {"S": f"s3a://{BUCKET}/lake/gold/predictions"}},
        ConsistentRead=True,
    )["Items"]
    assert entries and all(e["complete"]["S"] == "true" for e in entries), entries

    after = _project_files()
    assert after == before, sorted(k for k in after.keys() | before.keys() if after.get(k) != before.get(k))[:10]
    assert not (ROOT / "s3a:").exists() and not (tmp_path / "s3a:").exists()


def test_a_killed_ingest_on_object_storage_leaves_the_table_at_its_previous_version(object_store, tmp_path):
    env, client = object_store
    env = {
        **env,
        "TAXI_LAKEHOUSE": f"s3a://{BUCKET}/killed",
        "TAXI__SPARK__MASTER": "local[1]",
        # Many data files one after another: the kill lands after the first is visible and long before the commit.
        "TAXI__SPARK__CONF__spark.sql.files.maxRecordsPerFile": "20000",
    }
    s3 = _object_store_settings(env)
    first = subprocess.run(
        [taxi_bin(), "ingest", "--service", "green", "--month", "2023-01"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    version, rows = (
        storage.delta_table(lakehouse.BRONZE.location(s3)).version(),
        json.loads(first.stdout.strip().splitlines()[-1])["rows"],
    )
    big = tmp_path / "yellow_tripdata_2024-06.parquet"
    subprocess.run(
        [taxi_bin(), "synth", "--service", "yellow", "--month", "2024-06", "--rows", str(KILL_ROWS), "--out", str(big)],
        check=True,
        capture_output=True,
        env=env,
    )
    ingest = [taxi_bin(), "ingest", "--service", "yellow", "--month", "2024-06", "--source", str(big)]
    proc = subprocess.Popen(
        ingest, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    part = "killed/bronze/trips/service=yellow/month=2024-06/"
    deadline = time.monotonic() + 300
    while not _keys(client, part):  # the first data file is in the bucket: the write is under way
        assert proc.poll() is None, "ingest ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _keys(client, part), "the kill should leave orphan data files behind (the table must not list them)"
    table = storage.delta_table(lakehouse.BRONZE.location(s3))
    assert table.version() == version
    counts = lakehouse.query(s3, lakehouse.BRONZE, ["service", "month"])
    assert len(counts) == rows and set(counts["service"]) == {"green"}
    assert not _keys(client, "killed/raw/yellow/")  # the landing was never committed either


def test_two_hosts_validating_at_once_both_keep_their_results_pages_and_overview_rows(object_store, tmp_path):
    """Two validations of different months, in two processes with separate local folders (two hosts' worth of
    TMPDIR, so no file lock is shared): both results, both Data Docs pages and both overview rows survive, because
    the DynamoDB lease makes them take turns on the reports' GX project."""
    env, client = object_store
    env = {**env, "TAXI_LAKEHOUSE": f"s3a://{BUCKET}/two-hosts", "TAXI__SPARK__MASTER": "local[1]"}
    months = ("2022-01", "2022-02")
    for month in months:
        landed = subprocess.run(
            [taxi_bin(), "ingest", "--service", "green", "--month", month],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert landed.returncode == 0, landed.stderr[-3000:]
    hosts = []
    for month in months:
        host_tmp = tmp_path / f"host-{month}"
        host_tmp.mkdir()
        hosts.append(
            subprocess.Popen(
                [taxi_bin(), "validate", "--service", "green", "--month", month],
                env={**env, "TMPDIR": str(host_tmp)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = [h.communicate(timeout=900) for h in hosts]
    assert [h.returncode for h in hosts] == [0, 0], [err[-3000:] for _, err in outs]
    assert all(any(p.name.startswith("taxi-gx-") for p in (tmp_path / f"host-{m}").iterdir()) for m in months)

    keys = _keys(client, "two-hosts/reports/validation/")
    site = "two-hosts/reports/validation/gx/uncommitted/data_docs/local_site/"
    index = client.get_object(Bucket=BUCKET, Key=f"{site}index.html")["Body"].read().decode()
    overview = client.get_object(Bucket=BUCKET, Key="two-hosts/reports/validation/index.html")["Body"].read().decode()
    for month in months:
        for suite in ("green_file", "green_rows"):
            results = f"two-hosts/reports/validation/gx/uncommitted/validations/{suite}/green-{month}-validate-"
            pages = f"{site}validations/{suite}/green-{month}-validate-"
            assert any(k.startswith(results) and k.endswith(".json") for k in keys), (month, suite, "result")
            assert any(k.startswith(pages) and k.endswith(".html") for k in keys), (month, suite, "page")
            assert f"{suite}/green-{month}-validate-" in index, (month, suite, "Data Docs index")
        assert month in overview, (month, "overview")
    waited = [err for _, err in outs if "waiting for the lease" in err]
    print(f"validations that waited for the other's lease: {len(waited)} of 2")
