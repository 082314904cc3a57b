"""Reliability: fuzzed rows, duplicates, idempotence, crash safety, concurrent writers, MLflow down, security."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable

from jobs.entry.cli import main
from jobs.features import job as features
from jobs.ingest import job as ingest
from jobs.platform import lakehouse
from jobs.platform.errors import ServiceUnavailable
from jobs.scoring import job as score
from jobs.validation import job as validate

from .conftest import DATA, partition_rows, table_checksum, table_version
from .processes import job_env, taxi_bin, wait_until

DEFAULT_TIER = "integration"  # tests without a tier marker of their own

KILL_ROWS = 400_000  # enough that the write lasts seconds on local[1]: the kill lands while it is under way
CSV_HEADER = (
    "VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,passenger_count,trip_distance,RatecodeID,store_and_fwd_flag,"
    "PULocationID,DOLocationID,payment_type,fare_amount,extra,mta_tax,tip_amount,tolls_amount,improvement_surcharge,"
    "total_amount,congestion_surcharge"
)


def _fuzz_value(rng: random.Random, column: str, good: str) -> str:
    roll = rng.random()
    if roll < 0.80:
        return good
    return rng.choice(
        [
            "",  # null
            "NaN",
            "-1",
            "1e308",
            "-99999999999",
            "abc",  # wrong type
            "2021-13-45 25:61:61",
            "ÅßÇ☃️🚕",  # unicode
            '"quoted, with comma"',
            "0",
            " 3 ",
        ]
    )


def _fuzzed_csv(path: Path, rows: int = 10_000, seed: int = 3) -> Path:
    rng = random.Random(seed)
    base = pd.read_csv(DATA / "yellow-original-csv/yellow_tripdata_2021-01.csv", dtype=str, keep_default_na=False)
    cols = CSV_HEADER.split(",")
    lines = [CSV_HEADER]
    for i in range(rows):
        src = base.iloc[i % len(base)]
        vals = [_fuzz_value(rng, c, src[c]) for c in cols]
        lines.append(",".join(v if "," not in v or v.startswith('"') else f'"{v}"' for v in vals))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_fuzzed_rows_end_up_valid_or_quarantined_with_a_reason(spark, empty_lake, tmp_path):
    lenient = empty_lake.model_copy(deep=True)
    lenient.validation.max_failed_share = 1.0  # keep the month: every row must still be routed
    lenient.ingest.min_share_in_month = 0.0
    src = _fuzzed_csv(tmp_path / "yellow_tripdata_2021-01.csv")
    out = ingest.run(spark, lenient, "yellow", "2021-01", str(src))
    assert out["rows"] == 10_000
    result = validate.run(spark, lenient, "yellow", "2021-01")
    assert result["rows_valid"] + result["rows_quarantined"] == 10_000
    q = partition_rows(lenient, lakehouse.QUARANTINE, "yellow", "2021-01")
    assert len(q) == result["rows_quarantined"] > 1000
    assert q["failed_reasons"].map(len).min() >= 1
    reasons = {r for rs in q["failed_rules"] for r in rs}
    assert {"values_parse", "pickup_in_month", "trip_distance_range"} <= reasons
    # Unparsable values are named: the column list says which raw value failed.
    assert q["cast_errors"].map(len).max() >= 1


def test_duplicate_rows_are_quarantined_after_the_first_copy(spark, empty_lake, tmp_path):
    raw = pd.read_parquet(DATA / "yellow/yellow_tripdata_2019-04.parquet")
    dup = pd.concat([raw, raw.iloc[:50], raw.iloc[:10]], ignore_index=True)
    path = tmp_path / "yellow_tripdata_2019-04.parquet"
    dup.to_parquet(path, index=False)
    ingest.run(spark, empty_lake, "yellow", "2019-04", str(path))
    result = validate.run(spark, empty_lake, "yellow", "2019-04")
    q = partition_rows(empty_lake, lakehouse.QUARANTINE, "yellow", "2019-04")
    dups = q[q["failed_rules"].map(lambda rules: "not_a_duplicate" in rules)]
    assert len(dups) == 60  # rows 0-49 once more, rows 0-9 twice more: the first copy of each stays valid
    trips = partition_rows(empty_lake, lakehouse.TRIPS, "yellow", "2019-04", ["trip_id"])
    assert len(trips) + len(q) == len(dup) and result["rows_valid"] == len(trips)


def test_csv_with_a_broken_header_is_refused(empty_lake, cli_lakehouse, tmp_path, capsys):
    cli_lakehouse(empty_lake)
    bad = tmp_path / "yellow_tripdata_2021-02.csv"
    bad.write_text("VendorID;tpep_pickup_datetime;tpep_dropoff_datetime\n1;2021-02-01 00:00:00;2021-02-01 00:10:00\n")
    rc = main(["ingest", "--service", "yellow", "--month", "2021-02", "--source", str(bad)])
    assert rc == 2
    assert "yellow 2021-02: file yellow_tripdata_2021-02.csv is neither parquet nor CSV with a header row" in (
        capsys.readouterr().err
    )
    assert not lakehouse.exists(empty_lake, lakehouse.BRONZE) and not (empty_lake.raw_dir / "yellow").exists()


def test_every_job_again_leaves_every_table_unchanged(spark, golden, lake):
    """The golden lakehouse ran each job once; a copy runs them all again: every table's month reads the same."""
    tables = (lakehouse.BRONZE, lakehouse.TRIPS, lakehouse.QUARANTINE, lakehouse.FEATURES, lakehouse.PREDICTIONS)

    def checksums(s):
        return {t.key: table_checksum(t.path(s), "green", "2023-02") for t in tables}

    first = checksums(golden.settings)
    ingest.run(spark, lake, "green", "2023-02")
    validate.run(spark, lake, "green", "2023-02")
    features.run(spark, lake, "green", "2023-02")
    score.run(spark, lake, "green", "2023-02")
    assert checksums(lake) == first
    assert first["bronze_trips"][0] == 64809 and first["quarantine_trips"][0] > 0
    assert first["trips"][0] == first["features"][0] == first["predictions"][0] == 64809 - first["quarantine_trips"][0]
    # Each table got exactly one new commit: a rerun is one atomic replace, not a delete and a write.
    for t in tables:
        assert table_version(lake, t) == table_version(golden.settings, t) + 1, t.relpath


def _taxi_env(settings) -> dict[str, str]:
    return job_env(settings.lakehouse, TAXI__SPARK__MASTER="local[1]")


@pytest.mark.slow
def test_a_job_killed_mid_write_leaves_the_table_at_its_previous_version(lake, tmp_path):
    """SIGKILL while the month's data files are being written: no commit, the table reads as before."""
    settings = lake
    big = tmp_path / "yellow_tripdata_2024-06.parquet"
    subprocess.run(
        [taxi_bin(), "synth", "--service", "yellow", "--month", "2024-06", "--rows", str(KILL_ROWS), "--out", str(big)],
        check=True,
        capture_output=True,
    )
    before = DeltaTable(lakehouse.BRONZE.path(settings))
    version, rows = before.version(), len(before.to_pandas(columns=["month"]))
    part = Path(lakehouse.BRONZE.path(settings)) / "service=yellow" / "month=2024-06"
    proc = subprocess.Popen(
        [taxi_bin(), "ingest", "--service", "yellow", "--month", "2024-06", "--source", str(big)],
        env=_taxi_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not (part.exists() and any(part.glob("*.parquet"))):  # the write has started
        assert proc.poll() is None, "ingest ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    after = DeltaTable(lakehouse.BRONZE.path(settings))
    assert after.version() == version and len(after.to_pandas(columns=["month"])) == rows
    assert not (settings.raw_dir / "yellow" / "2024-06").exists()  # the landing was never committed either
    rerun = subprocess.run(
        [taxi_bin(), "ingest", "--service", "yellow", "--month", "2024-06", "--source", str(big)],
        env=_taxi_env(settings),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert table_checksum(lakehouse.BRONZE.path(settings), "yellow", "2024-06")[0] == KILL_ROWS


@pytest.mark.slow
def test_two_scoring_processes_on_the_same_month_both_succeed_with_one_copy_of_each_row(lake):
    cmd = [taxi_bin(), "score", "--service", "green", "--month", "2023-02"]
    procs = [
        subprocess.Popen(cmd, env=_taxi_env(lake), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=900) for p in procs]
    # Optimistic concurrency: whichever loses the commit race retries its replaceWhere; both end in success.
    assert [p.returncode for p in procs] == [0, 0], [r[1][-1500:] for r in results]
    preds = partition_rows(lake, lakehouse.PREDICTIONS, "green", "2023-02", ["trip_id", "scoring_run_id"])
    trips = partition_rows(lake, lakehouse.TRIPS, "green", "2023-02", ["trip_id"])
    assert preds["trip_id"].is_unique and len(preds) == len(trips)
    assert preds["scoring_run_id"].nunique() == 1  # one run's rows, never a mix of the two


@pytest.mark.unit
def test_retry_on_conflict_retries_only_conflicts_and_gives_up_after_the_configured_tries(caplog):
    class ConcurrentAppendException(Exception):  # named like Delta's, as py4j surfaces it
        pass

    calls = []

    def flaky(fail_times, error=ConcurrentAppendException):
        def write():
            calls.append(1)
            if len(calls) <= fail_times:
                raise error("Files were added to partition [service=green, month=2023-02] by a concurrent update")

        return write

    assert lakehouse.retry_on_conflict(flaky(2), "t", retries=3, backoff_s=0) == 2 and len(calls) == 3
    assert "concurrent write to t (attempt 2)" in caplog.text
    calls.clear()
    with pytest.raises(ConcurrentAppendException):
        lakehouse.retry_on_conflict(flaky(3), "t", retries=3, backoff_s=0)
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(ValueError):  # not a conflict: raised at once
        lakehouse.retry_on_conflict(flaky(1, ValueError), "t", retries=3, backoff_s=0)
    assert len(calls) == 1


@pytest.mark.spark
def test_two_writers_of_one_partition_conflict_and_the_loser_retries(spark, empty_lake, tmp_path, caplog):
    """Writer A starts first and writes slowly; writer B commits the same partition while A is writing. Delta
    refuses A's commit (its snapshot is stale), A retries, and the partition ends with A's rows only."""
    import threading

    from pyspark.sql import functions as F

    table = lakehouse.Table("conflict", "test/conflict")
    a_started, b_committed = tmp_path / "a-started", tmp_path / "b-committed"

    def slow_rows(batches):  # runs inside A's write, after A's transaction read its snapshot
        import time as t

        a_started.touch()
        deadline = t.monotonic() + 120
        while not b_committed.exists() and t.monotonic() < deadline:
            t.sleep(0.1)
        yield from batches

    def frame(writer: str, n: int):  # one partition: A's waiting task leaves the other core to B
        labels = {"writer": writer, "service": "green", "month": "2023-02"}
        return spark.range(0, n, 1, 1).select("id", *[F.lit(v).alias(k) for k, v in labels.items()])

    lakehouse.replace_partition(frame("seed", 3), empty_lake, table, "seed", "green", "2023-02")
    a_df = frame("A", 5).mapInPandas(slow_rows, "id long, writer string, service string, month string")
    result = {}
    a = threading.Thread(
        target=lambda: result.setdefault(
            "a", lakehouse.replace_partition(a_df, empty_lake, table, "run-a", "green", "2023-02")
        )
    )
    a.start()
    wait_until("writer A inside its write", a_started.exists, timeout_s=120, interval_s=0.1)
    result["b"] = lakehouse.replace_partition(frame("B", 7), empty_lake, table, "run-b", "green", "2023-02")
    b_committed.touch()
    a.join(180)
    assert not a.is_alive() and "a" in result
    assert "concurrent write to test/conflict" in caplog.text  # A's first commit was refused and retried
    rows = partition_rows(empty_lake, table, "green", "2023-02")
    assert sorted(rows.writer.unique()) == ["A"] and len(rows) == 5
    assert result["a"] > result["b"]  # A's retry committed after B


@pytest.mark.spark
def test_arrow_and_pandas_predictions_agree_with_nulls(spark):
    """The scoring path (Arrow batches into the booster, nulls as NaN) predicts what the pandas path predicts."""
    import lightgbm as lgb
    import numpy as np
    import xgboost as xgb

    from jobs.models.flavors import NativeModel, predict_log
    from jobs.models.inputs import MODEL_FEATURES, PREDICTION
    from jobs.models.prediction import feature_matrix, predict_minutes

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, len(MODEL_FEATURES)))
    x[rng.random(x.shape) < 0.2] = np.nan  # a fifth of the values missing
    y = np.log1p(np.abs(np.nan_to_num(x[:, 0])) * 10 + 1)
    pdf = pd.DataFrame(x, columns=MODEL_FEATURES).assign(trip_id=[f"t{i}" for i in range(len(x))])
    from pyspark.sql import functions as F

    sdf = spark.createDataFrame(pdf).repartition(3)
    sdf = sdf.select("trip_id", *[F.when(~F.isnan(c), F.col(c)).alias(c) for c in MODEL_FEATURES])  # NaN -> null
    assert sdf.where(F.col(MODEL_FEATURES[0]).isNull()).count() > 0
    models = {
        "xgboost": NativeModel.from_booster(xgb.train({"max_depth": 3}, xgb.DMatrix(x, y), 10)),
        "lightgbm": NativeModel.from_booster(
            lgb.train({"verbosity": -1, "min_data_in_leaf": 5}, lgb.Dataset(x, y), 10)
        ),
    }
    for flavor, model in models.items():
        got = predict_minutes(sdf, model, ["trip_id"]).toPandas().set_index("trip_id").loc[pdf.trip_id]
        want = np.clip(np.expm1(predict_log(model.booster(), flavor, feature_matrix(pdf))), 0, None)
        np.testing.assert_allclose(got[PREDICTION].to_numpy(), want, rtol=1e-5, err_msg=flavor)
        assert got[PREDICTION].notna().all()


def test_mlflow_unreachable_fails_clearly_and_registers_nothing(spark, golden, monkeypatch):
    from jobs.training import job as train

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the job's own tries are what is under test

    s = golden.settings
    client = golden.client()
    name = s.registered_model("green")
    versions = len(client.search_model_versions(f"name = '{name}'"))
    down = s.model_copy(deep=True)
    down.mlflow.tracking_uri = "http://127.0.0.1:9"  # nothing listens there
    import mlflow

    uri_before = mlflow.get_tracking_uri()
    t = time.monotonic()
    with pytest.raises(
        ServiceUnavailable, match=r"MLflow tracking server http://127.0.0.1:9 unreachable after 3 tries"
    ):
        train.run(spark, down, "green", "2023-01", months=13)
    with pytest.raises(ServiceUnavailable):
        score.run(spark, down, "green", "2023-02")
    assert time.monotonic() - t < 120  # bounded retries (back-off from config: short in tests)
    assert len(client.search_model_versions(f"name = '{name}'")) == versions
    # A failed connection leaves the process's MLflow settings as they were (later jobs are unaffected).
    assert mlflow.get_tracking_uri() == mlflow.get_registry_uri() == uri_before
