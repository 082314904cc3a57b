"""Many drivers committing to one Delta table on an s3a:// lakehouse at once: the load test of writes.s3_log_store.

    python bench/concurrent_writers.py --moto                       # both stores, 4 writers x 6 rounds
    python bench/concurrent_writers.py --stores dynamodb --writers 8 --rounds 10   # on TAXI_LAKEHOUSE (s3a://)

Each writer is a driver process of its own (its own JVM, local[1]) that replaces its own month partition of the
table ``bench/concurrent_writes/<store>`` once per round through the jobs' write path (``replace_partition``, with
its conflict retries). A round starts when every writer has finished the previous one, so all of them race for the
same log versions each round. Afterwards the table's log is read back (delta-rs, no Spark): commits expected
(1 + writers x rounds), commits found (by the run id each commit carries), commits lost, whether the versions are
contiguous, and whether every partition holds exactly its writer's last round. The median seconds of one commit
under this load are compared between the stores of the same run (``commit_seconds_ratio``).

``--moto`` starts moto's S3 and DynamoDB server on the loopback interface for the run (the [dev] extra has it);
otherwise the lakehouse and the AWS endpoint come from the environment, as for every job.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ROWS_PER_WRITER = 200
BUCKET = "taxi-bench"
MOTO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_REGION": "us-east-1"}


def parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stores", default="dynamodb,single-driver", help="log stores to load, in this order")
    p.add_argument("--writers", type=int, default=4, help="driver processes at once (default 4)")
    p.add_argument("--rounds", type=int, default=6, help="commits per writer (default 6)")
    p.add_argument("--moto", action="store_true", help="run against a moto server started here on 127.0.0.1")
    p.add_argument("--out", type=Path, help="also write the result JSON here")
    p.add_argument("--writer", type=int, help=argparse.SUPPRESS)  # a child: this writer's index
    p.add_argument("--barrier", type=Path, help=argparse.SUPPRESS)  # a child: the run's rendezvous folder
    p.add_argument("--store", help=argparse.SUPPRESS)  # a child: its store
    p.add_argument("--first-round", type=int, default=0, help=argparse.SUPPRESS)  # a child: its first round's number
    return p.parse_args(argv)


def month_of(writer: int) -> str:
    return f"{2000 + writer // 12}-{writer % 12 + 1:02d}"


def run_id(writer: int, round_: int) -> str:
    return f"w{writer}-r{round_}"


# ---- a writer (child process) ----------------------------------------------------------------------------------
def wait_for(folder: Path, names: list[str], timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while not all((folder / n).exists() for n in names):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waiting for {names} in {folder}")
        time.sleep(0.02)


def writer_main(args: argparse.Namespace) -> int:
    from jobs.platform import lakehouse
    from jobs.platform.config import load_settings
    from jobs.platform.spark import get_spark

    settings = load_settings()
    table = lakehouse.Table("bench_concurrent_writes", f"bench/concurrent_writes/{args.store}")
    spark = get_spark(settings, app_name=f"taxi-bench-writer-{args.writer}")
    me, everyone = args.writer, [f"ready-{w}" for w in range(args.writers)]

    def rows(round_: int, writer: int = me):
        return spark.range(ROWS_PER_WRITER).selectExpr(
            "'bench' as service", f"'{month_of(writer)}' as month", f"{writer} as writer", f"{round_} as round", "id"
        )

    if me == 0 and not lakehouse.exists(settings, table):  # version 0, with round -1 of every partition
        first = rows(-1)
        for w in range(1, args.writers):
            first = first.unionByName(rows(-1, w))
        first.write.format("delta").partitionBy("service", "month").option("userMetadata", "create").save(
            table.path(settings)
        )
    else:
        rows(-1).count()  # the JVM warm, so the rounds measure commits, not start-up
    (args.barrier / f"ready-{me}").touch()
    wait_for(args.barrier, everyone)
    seconds, unconfirmed = [], []
    for r in range(args.first_round, args.first_round + args.rounds):
        start = time.perf_counter()
        try:
            lakehouse.replace_partition(rows(r), settings, table, run_id(me, r), "bench", month_of(me))
        except RuntimeError as e:  # its commit is not in the history it reads back: overwritten by another driver
            unconfirmed.append(f"{run_id(me, r)}: {e}")
        seconds.append(time.perf_counter() - start)
        (args.barrier / f"done-{r}-{me}").touch()
        wait_for(args.barrier, [f"done-{r}-{w}" for w in range(args.writers)])
    print(json.dumps({"writer": me, "commit_seconds": seconds, "unconfirmed": unconfirmed}))
    spark.stop()
    return 0


# ---- the run (parent) ------------------------------------------------------------------------------------------
def load(store: str, writers: int, rounds: int, env: dict[str, str]) -> dict:
    """``writers`` driver processes replacing their partitions ``rounds`` times on ``store``; what the log shows."""
    with tempfile.TemporaryDirectory(prefix="taxi-writers-") as barrier:
        child_env = {
            **env,
            "TAXI__WRITES__S3_LOG_STORE": store,
            "TAXI__AIRFLOW__SPARK_POOL_SLOTS": "1",  # the single-driver control must be allowed to start
            "TAXI__SPARK__MASTER": "local[1]",
            "TAXI__SPARK__CLASS_ARCHIVE": "false",
            "TAXI__SPARK__CONF__spark.driver.memory": "1g",
        }
        args = ["--store", store, "--barrier", barrier, "--writers", str(writers), "--rounds", str(rounds)]
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--writer", str(w), *args],
                env=child_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for w in range(writers)
        ]
        outs = [p.communicate(timeout=1800) for p in procs]
    failed = [(w, p.returncode, outs[w][1][-3000:]) for w, p in enumerate(procs) if p.returncode]
    if failed:
        raise RuntimeError(f"{store}: writers failed: {failed}")
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    found = audit(store, writers, rounds, env)
    return {"store": store, "writers": writers, "rounds": rounds, **found, "reports": reports}


def audit(store: str, writers: int, rounds: int, env: dict[str, str]) -> dict:
    """Read the table's log and rows back from object storage (delta-rs) and count what is missing."""
    from jobs.platform import storage
    from jobs.platform.config import load_settings

    settings = load_settings(env=env)
    with _environment(env):
        table = storage.delta_table(table_uri(settings, store))
        history = table.history()
        rows = table.to_pandas(columns=["month", "writer", "round"])
    expected = {"create"} | {run_id(w, r) for w in range(writers) for r in range(rounds)}
    entries = log_entries(settings, table_uri(settings, store), env) if store == "dynamodb" else None
    found = [h.get("userMetadata") for h in history]
    versions = sorted(h["version"] for h in history)
    last = {month_of(w): (w, rounds - 1) for w in range(writers)}
    wrong = {
        month: sorted({(int(r.writer), int(r.round)) for r in part.itertuples()})
        for month, part in rows.groupby("month")
        if len(part) != ROWS_PER_WRITER or {(int(r.writer), int(r.round)) for r in part.itertuples()} != {last[month]}
    }
    return {
        "commits_expected": len(expected),
        "commits_found": len(set(found) & expected),
        "commits_lost": sorted(expected - set(found)),
        "versions": len(versions),
        "versions_contiguous": versions == list(range(len(versions))),
        "partitions_wrong": wrong,
        "log_entries": entries,
    }


def table_uri(settings, store: str) -> str:
    return str(settings.lakehouse / f"bench/concurrent_writes/{store}")


def log_entries(settings, uri: str, env: dict[str, str]) -> dict[str, int]:
    """The DynamoDB log store's entries for the table: how many, and how many are complete."""
    import boto3

    from jobs.platform import log_store

    with _environment(env):
        client = boto3.client("dynamodb", endpoint_url=log_store.endpoint(settings) or None, **_boto(os.environ))
    pages = client.get_paginator("query").paginate(
        TableName=settings.writes.dynamodb_table,
        KeyConditionExpression="tablePath = :t",
        ExpressionAttributeValues={":t": {"S": uri}},
        ConsistentRead=True,
    )
    items = [item for page in pages for item in page["Items"]]
    return {"entries": len(items), "complete": sum(i["complete"]["S"] == "true" for i in items)}


@contextmanager
def _environment(env: dict[str, str]):
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def moto_server():
    """moto's S3 + DynamoDB server on a free loopback port, with the bucket; yields the jobs' environment."""
    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto_server did not start")
            time.sleep(0.2)
        boto3.client("s3", endpoint_url=endpoint, **_boto(MOTO_CREDENTIALS)).create_bucket(Bucket=BUCKET)
        yield {
            **MOTO_CREDENTIALS,
            "AWS_ENDPOINT_URL": endpoint,
            "TAXI_LAKEHOUSE": f"s3a://{BUCKET}/lake",
            # An object-store lakehouse needs a tracking server in its settings; the writers never contact it.
            "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _boto(creds) -> dict[str, str]:
    return {
        "aws_access_key_id": creds.get("AWS_ACCESS_KEY_ID"),
        "aws_secret_access_key": creds.get("AWS_SECRET_ACCESS_KEY"),
        "region_name": creds.get("AWS_REGION", "us-east-1"),
    }


def run(stores: list[str], writers: int, rounds: int, env: dict[str, str]) -> dict:
    results = {store: load(store, writers, rounds, env) for store in stores}
    medians = {
        store: statistics.median(s for rep in r["reports"] for s in rep["commit_seconds"])
        for store, r in results.items()
    }
    out = {"stores": results, "median_commit_seconds": {k: round(v, 3) for k, v in medians.items()}}
    if {"dynamodb", "single-driver"} <= set(medians):
        out["commit_seconds_ratio"] = round(medians["dynamodb"] / medians["single-driver"], 3)
    return out


def main(argv=None) -> int:
    args = parse(argv)
    if args.writer is not None:
        return writer_main(args)
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    base = {k: v for k, v in os.environ.items() if not (args.moto and k.startswith("AWS_"))}
    if args.moto:
        with moto_server() as aws:
            result = run(stores, args.writers, args.rounds, {**base, **aws})
    else:
        result = run(stores, args.writers, args.rounds, base)
    text = json.dumps({k: v for k, v in result.items()}, indent=1, default=str)
    if args.out:
        args.out.write_text(text)
    summary = {
        s: {k: r[k] for k in ("commits_expected", "commits_found", "commits_lost", "versions_contiguous")}
        for s, r in result["stores"].items()
    }
    print(json.dumps({"summary": summary, **{k: v for k, v in result.items() if k != "stores"}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
