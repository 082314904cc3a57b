"""Reliability: fuzzed rows, duplicates, idempotence, crash safety, concurrent writers, MLflow down, security."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable

from jobs import features, ingest, lakehouse, score, validate
from jobs.cli import main
from jobs.errors import ServiceUnavailable

from .conftest import DATA, table_checksum, table_version

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


def test_fuzzed_rows_end_up_valid_or_quarantined_with_a_reason(spark, settings, tmp_path):
    lenient = settings.model_copy(deep=True)
    lenient.validation.max_failed_share = 1.0  # keep the month: every row must still be routed
    lenient.ingest.min_share_in_month = 0.0
    src = _fuzzed_csv(tmp_path / "yellow_tripdata_2021-01.csv")
    out = ingest.run(spark, lenient, "yellow", "2021-01", str(src))
    assert out["rows"] == 10_000
    result = validate.run(spark, lenient, "yellow", "2021-01")
    assert result["rows_valid"] + result["rows_quarantined"] == 10_000
    q = DeltaTable(lakehouse.QUARANTINE.path(settings)).to_pandas(
        filters=[("service", "=", "yellow"), ("month", "=", "2021-01")]
    )
    assert len(q) == result["rows_quarantined"] > 1000
    assert q["failed_reasons"].map(len).min() >= 1
    reasons = {r for rs in q["failed_rules"] for r in rs}
    assert {"values_parse", "pickup_in_month", "trip_distance_range"} <= reasons
    # Unparsable values are named: the column list says which raw value failed.
    assert q["cast_errors"].map(len).max() >= 1


def test_duplicate_rows_are_quarantined_after_the_first_copy(spark, settings, tmp_path):
    raw = pd.read_parquet(DATA / "yellow/yellow_tripdata_2019-04.parquet")
    dup = pd.concat([raw, raw.iloc[:50], raw.iloc[:10]], ignore_index=True)
    path = tmp_path / "yellow_tripdata_2019-04.parquet"
    dup.to_parquet(path, index=False)
    ingest.run(spark, settings, "yellow", "2019-04", str(path))
    validate.run(spark, settings, "yellow", "2019-04")
    q = DeltaTable(lakehouse.QUARANTINE.path(settings)).to_pandas(
        filters=[("service", "=", "yellow"), ("month", "=", "2019-04")]
    )
    assert sum("not_a_duplicate" in rules for rules in q["failed_rules"]) == 60
    ingest.run(spark, settings, "yellow", "2019-04")  # restore the real month
    validate.run(spark, settings, "yellow", "2019-04")


def test_csv_with_a_broken_header_is_refused(tmp_path, settings, capsys):
    bad = tmp_path / "yellow_tripdata_2021-02.csv"
    bad.write_text("VendorID;tpep_pickup_datetime;tpep_dropoff_datetime\n1;2021-02-01 00:00:00;2021-02-01 00:10:00\n")
    version = table_version(settings, lakehouse.BRONZE)
    rc = main(["ingest", "--service", "yellow", "--month", "2021-02", "--source", str(bad)])
    assert rc == 2
    assert "neither parquet nor CSV with a header row" in capsys.readouterr().err
    assert table_version(settings, lakehouse.BRONZE) == version


def test_every_job_twice_leaves_every_table_unchanged(spark, settings, trained_green):
    tables = (lakehouse.BRONZE, lakehouse.TRIPS, lakehouse.QUARANTINE, lakehouse.FEATURES, lakehouse.PREDICTIONS)

    def run_all():
        ingest.run(spark, settings, "green", "2023-02")
        validate.run(spark, settings, "green", "2023-02")
        features.run(spark, settings, "green", "2023-02")
        score.run(spark, settings, "green", "2023-02")
        return {t.key: table_checksum(t.path(settings), "green", "2023-02") for t in tables}

    first, second = run_all(), run_all()
    assert first == second
    assert first["bronze_trips"][0] == 64809 and first["quarantine_trips"][0] > 0
    assert first["trips"][0] == first["features"][0] == first["predictions"][0] == 64809 - first["quarantine_trips"][0]


def _taxi_env(settings) -> dict[str, str]:
    return {**os.environ, "TAXI_LAKEHOUSE": str(settings.lakehouse), "TAXI__SPARK__MASTER": "local[1]"}


def test_a_job_killed_mid_write_leaves_the_table_at_its_previous_version(settings, tmp_path):
    """SIGKILL while the month's data files are being written: no commit, the table reads as before."""
    big = tmp_path / "yellow_tripdata_2024-06.parquet"
    subprocess.run([str(Path(sys.executable).parent / "taxi"), "synth", "--service", "yellow", "--month", "2024-06",
                    "--rows", "1500000", "--out", str(big)], check=True, capture_output=True)  # fmt: skip
    before = DeltaTable(lakehouse.BRONZE.path(settings))
    version, rows = before.version(), len(before.to_pandas(columns=["month"]))
    part = Path(lakehouse.BRONZE.path(settings)) / "service=yellow" / "month=2024-06"
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "taxi"), "ingest", "--service", "yellow", "--month", "2024-06",
         "--source", str(big)],
        env=_taxi_env(settings), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
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
        [str(Path(sys.executable).parent / "taxi"), "ingest", "--service", "yellow", "--month", "2024-06",
         "--source", str(big)], env=_taxi_env(settings), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert table_checksum(lakehouse.BRONZE.path(settings), "yellow", "2024-06")[0] == 1_500_000


def test_two_scoring_runs_of_the_same_month_leave_one_copy_of_each_row(settings, trained_green):
    cmd = [str(Path(sys.executable).parent / "taxi"), "score", "--service", "green", "--month", "2023-02"]
    procs = [subprocess.Popen(cmd, env=_taxi_env(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]  # fmt: skip
    results = [p.communicate(timeout=900) for p in procs]
    codes = [p.returncode for p in procs]
    # Optimistic concurrency: the loser retries (or, past its retries, fails with a clear error): never duplicates.
    assert codes.count(0) >= 1, [r[1][-1500:] for r in results]
    for code, (_, err) in zip(codes, results, strict=True):
        if code != 0:
            assert "Concurrent" in err
    preds = DeltaTable(lakehouse.PREDICTIONS.path(settings)).to_pandas(
        filters=[("service", "=", "green"), ("month", "=", "2023-02")], columns=["trip_id"]
    )
    trips = DeltaTable(lakehouse.TRIPS.path(settings)).to_pandas(
        filters=[("service", "=", "green"), ("month", "=", "2023-02")], columns=["trip_id"]
    )
    assert preds["trip_id"].is_unique and len(preds) == len(trips)


def test_mlflow_unreachable_fails_clearly_and_registers_nothing(spark, settings, trained_green, capsys):
    import mlflow

    name = settings.registered_model("green")
    client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    versions = len(client.search_model_versions(f"name = '{name}'"))
    down = settings.model_copy(deep=True)
    down.mlflow.tracking_uri = "http://127.0.0.1:9"  # nothing listens there
    from jobs import train

    t = time.monotonic()
    with pytest.raises(
        ServiceUnavailable, match=r"MLflow tracking server http://127.0.0.1:9 unreachable after 3 tries"
    ):
        train.run(spark, down, "green", "2023-01", months=13)
    with pytest.raises(ServiceUnavailable):
        score.run(spark, down, "green", "2023-02")
    assert time.monotonic() - t < 180  # bounded retries
    assert len(client.search_model_versions(f"name = '{name}'")) == versions
    # A failed connection leaves the process's MLflow settings as they were (later jobs are unaffected).
    assert mlflow.get_tracking_uri() == mlflow.get_registry_uri() == settings.tracking_uri


def test_models_load_only_from_the_registry(capsys):
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    help_text = capsys.readouterr().out
    assert "--model-alias" in help_text and "--model-version" in help_text
    assert "path" not in help_text.lower().replace("registry", "")
