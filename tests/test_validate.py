"""Validation: GX counts equal an independent pandas count, quarantine is lossless, bad schemas reject a month."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from jobs.entry.cli import main
from jobs.ingest import job as ingest
from jobs.platform import lakehouse
from jobs.platform.errors import MissingUpstream, MonthRejected
from jobs.validation import job as validate

from .conftest import DATA, GOLDEN_GREEN, table_checksum, table_version
from .processes import job_env, taxi_bin

DEFAULT_TIER = "integration"  # tests without a tier marker of their own


def _pandas_rule_counts(path, month: str, service: str) -> dict[str, int]:
    """Each rule computed independently, in plain pandas, on the TLC file as published."""
    raw = pd.read_parquet(path)
    p = "lpep_" if service == "green" else "tpep_"
    pu, do = raw[f"{p}pickup_datetime"], raw[f"{p}dropoff_datetime"]
    dur = (do - pu).dt.total_seconds() / 60

    def outside(s, lo, hi):
        return int(((s < lo) | (s > hi)).sum())  # NaN compares False: nulls are not counted, as in GX

    def not_in(s, allowed):
        return int((s.notna() & ~s.isin(allowed)).sum())

    counts = {
        "pickup_datetime_not_null": int(pu.isna().sum()),
        "dropoff_datetime_not_null": int(do.isna().sum()),
        "PULocationID_not_null": int(raw["PULocationID"].isna().sum()),
        "DOLocationID_not_null": int(raw["DOLocationID"].isna().sum()),
        "trip_distance_not_null": int(raw["trip_distance"].isna().sum()),
        "values_parse": 0,
        "not_a_duplicate": int(raw.duplicated().sum()),
        "pickup_in_month": int((pu.dt.strftime("%Y-%m") != month).sum()),
        "dropoff_after_pickup": int((do <= pu).sum()),
        "duration_max": int((dur > 24 * 60).sum()),
        "trip_distance_range": outside(raw["trip_distance"], 0, 100),
        "passenger_count_range": outside(raw["passenger_count"], 0, 9),
        "fare_amount_range": outside(raw["fare_amount"], 0, 1000),
        "pu_location_known": outside(raw["PULocationID"], 1, 265),
        "do_location_known": outside(raw["DOLocationID"], 1, 265),
        "vendor_known": not_in(raw["VendorID"], [1, 2, 5, 6, 7]),
        "ratecode_known": not_in(raw["RatecodeID"], [1, 2, 3, 4, 5, 6, 99]),
        "payment_type_known": not_in(raw["payment_type"], [0, 1, 2, 3, 4, 5, 6]),
        "store_and_fwd_flag_known": not_in(raw["store_and_fwd_flag"], ["Y", "N"]),
    }
    if service == "green":
        counts["trip_type_known"] = not_in(raw["trip_type"], [1, 2])
    return counts


def _last_run(settings, service, month) -> dict:
    runs = DeltaTable(lakehouse.VALIDATION_RUNS.path(settings)).to_pandas()
    runs = runs[(runs.service == service) & (runs.month == month)].sort_values("started_at")
    return runs.iloc[-1].to_dict()


def _gx_status(settings, run: dict) -> dict[str, bool]:
    """{suite: success} of the GX validation results a `taxi validate` run stored (the Data Docs' source)."""
    store = settings.reports_dir / "validation" / "gx" / "uncommitted" / "validations"
    results = store.glob(f"*/{run['service']}-{run['month']}-{run['run_id']}/*/*.json")
    return {json.loads(p.read_text())["suite_name"]: json.loads(p.read_text())["success"] for p in results}


def test_data_docs_and_validation_runs_give_one_verdict_per_month(golden):
    """An accepted month's Data Docs say Succeeded (row rules hold for `mostly` of the rows, the month rule bounds
    the failing share), not "Failed" next to a `passed` verdict."""
    runs = DeltaTable(lakehouse.VALIDATION_RUNS.path(golden.settings)).to_pandas()
    assert len(runs) >= 4
    for run in runs.to_dict("records"):
        status = _gx_status(golden.settings, run)
        assert set(status) == {f"{run['service']}_file", f"{run['service']}_rows"}, run["run_id"]
        assert all(status.values()) == (run["verdict"] == "passed"), (run["month"], run["verdict"], status)
    # green 2023-02 has failing rows (quarantined), yet the month passes: both say so
    feb = runs[runs.month == "2023-02"].iloc[-1]
    assert feb["rows_quarantined"] > 0 and feb["verdict"] == "passed"


def _count(settings, table, service, month) -> int:
    if not lakehouse.exists(settings, table):
        return 0
    return len(DeltaTable(table.path(settings)).to_pandas(filters=[("service", "=", service), ("month", "=", month)]))


@pytest.mark.parametrize("month", ["2023-01", "2023-02"])
def test_gx_rule_counts_equal_an_independent_pandas_count(golden, month):
    expected = _pandas_rule_counts(DATA / f"green/green_tripdata_{month}.parquet", month, "green")
    run = _last_run(golden.settings, "green", month)
    assert dict(run["rule_failures"]) == expected
    # The real file is messy: these rules do fire.
    assert expected["pickup_in_month"] > 0 and expected["dropoff_after_pickup"] > 0
    assert expected["fare_amount_range"] > 100 and expected["trip_distance_range"] > 0
    assert run["verdict"] == "passed" and dict(run["suite_versions"])["green_rows"] == "1.1.0"


@pytest.mark.parametrize("service, month", [*[("green", m) for m in GOLDEN_GREEN], ("yellow", "2025-02")])
def test_quarantine_is_lossless_on_every_shipped_month(spark, golden, empty_lake, service, month):
    lake = golden.settings
    if service == "yellow":  # not in the golden lakehouse: landed into a new one
        lake = empty_lake
        ingest.run(spark, lake, service, month)
        validate.run(spark, lake, service, month)
    raw_rows = pq.read_metadata(ingest.landed_file(lake, service, month).path).num_rows
    valid = _count(lake, lakehouse.TRIPS, service, month)
    quarantined = _count(lake, lakehouse.QUARANTINE, service, month)
    assert valid + quarantined == raw_rows == _count(lake, lakehouse.BRONZE, service, month)
    assert 0 < quarantined < 0.1 * raw_rows
    q = DeltaTable(lakehouse.QUARANTINE.path(lake)).to_pandas(
        filters=[("service", "=", service), ("month", "=", month)]
    )
    assert q["failed_rules"].map(len).min() >= 1
    assert q["failed_reasons"].map(len).equals(q["failed_rules"].map(len))
    trips = DeltaTable(lakehouse.TRIPS.path(lake)).to_pandas(
        filters=[("service", "=", service), ("month", "=", month)], columns=["trip_id"]
    )
    assert not set(trips["trip_id"]) & set(q["trip_id"])


def test_rerun_does_not_duplicate_quarantine_rows(spark, lake):
    before = _count(lake, lakehouse.QUARANTINE, "green", "2023-02")
    again = validate.run(spark, lake, "green", "2023-02")
    assert _count(lake, lakehouse.QUARANTINE, "green", "2023-02") == before == again["rows_quarantined"]
    assert _count(lake, lakehouse.TRIPS, "green", "2023-02") == again["rows_valid"]


def _mutated(tmp_path, change):
    table = pq.read_table(DATA / "green/green_tripdata_2023-02.parquet")
    out = tmp_path / "green_tripdata_2023-02.parquet"
    pq.write_table(change(table), out)
    return out


@pytest.mark.parametrize(
    "case, change, rule",
    [
        ("missing column", lambda t: t.drop(["fare_amount"]), "columns_present"),
        (
            "renamed column",
            lambda t: t.rename_columns(["trip_dist" if c == "trip_distance" else c for c in t.column_names]),
            "columns_present",
        ),
        (
            "wrong type",
            lambda t: t.set_column(
                t.column_names.index("trip_distance"), "trip_distance", pc.cast(t["trip_distance"], pa.string())
            ),
            "type_trip_distance",
        ),
    ],
)
def test_broken_schema_rejects_the_whole_month(spark, lake, cli_lakehouse, tmp_path, capsys, case, change, rule):
    """The month is rejected with the rule named; nothing downstream changes; the run is recorded."""
    cli_lakehouse(lake)
    ingest.run(spark, lake, "green", "2023-02", str(_mutated(tmp_path, change)))
    versions = {t.key: table_version(lake, t) for t in (lakehouse.TRIPS, lakehouse.QUARANTINE)}
    rc = main(["validate", "--service", "green", "--month", "2023-02"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == MonthRejected.exit_code
    assert err.startswith("taxi validate: error: green 2023-02 rejected: ") and rule in err
    assert {t.key: table_version(lake, t) for t in (lakehouse.TRIPS, lakehouse.QUARANTINE)} == versions
    run = _last_run(lake, "green", "2023-02")
    assert run["verdict"] == "rejected" and rule in list(run["file_rules_failed"])
    assert _gx_status(lake, run)["green_file"] is False  # the Data Docs say the same


def _raw_zone(settings, service: str, month: str) -> dict[str, str]:
    """{file: sha256} of the month's landed files (the accepted copy included)."""
    root = settings.raw_dir / service / month
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_a_rejected_relanding_costs_nothing(spark, lake, tmp_path):
    """Re-landing green 2023-02 with a file that fails validation leaves every table's rows and the raw zone byte for
    byte as they were; the rejected file is kept aside with its checksum and the rule that rejected it."""

    def bad_distances(t):
        d = t["trip_distance"].to_numpy().copy()
        d[: len(d) // 5] = 500.0  # 20% of rows over the 100-mile limit
        return t.set_column(t.column_names.index("trip_distance"), "trip_distance", pa.array(d))

    tables = (lakehouse.BRONZE, lakehouse.TRIPS, lakehouse.QUARANTINE, lakehouse.FEATURES)
    before = {t.key: table_checksum(t.path(lake), "green", "2023-02") for t in tables}
    raw_before = _raw_zone(lake, "green", "2023-02")
    assert "_accepted/green_tripdata_2023-02.parquet" in raw_before  # validation kept the accepted file

    bad = _mutated(tmp_path, bad_distances)
    ingest.run(spark, lake, "green", "2023-02", str(bad))
    assert table_checksum(lakehouse.BRONZE.path(lake), "green", "2023-02") != before["bronze_trips"]  # landed, for now
    with pytest.raises(MonthRejected, match=r"of rows fail the row rules .*trip_distance_range="):
        validate.run(spark, lake, "green", "2023-02")

    assert {t.key: table_checksum(t.path(lake), "green", "2023-02") for t in tables} == before
    assert _raw_zone(lake, "green", "2023-02") == raw_before
    run = _last_run(lake, "green", "2023-02")
    assert run["verdict"] == "rejected" and _gx_status(lake, run) == {"green_file": True, "green_rows": False}
    kept = Path(run["set_aside"])
    assert kept.parent.parent == lake.raw_dir / "_rejected" / "green" / "2023-02"
    assert (
        hashlib.sha256(kept.read_bytes()).hexdigest()
        == run["landed_checksum"]
        == hashlib.sha256(bad.read_bytes()).hexdigest()
    )
    assert "trip_distance_range" in json.loads((kept.parent / "_rejected.json").read_text())["reason"]
    # The accepted data is back, and validates as before.
    assert validate.run(spark, lake, "green", "2023-02")["verdict"] == "passed"


@pytest.mark.slow
def test_green_and_yellow_validated_at_once_in_two_processes(spark, lake, tmp_path):
    """Two `taxi validate` processes on one lakehouse (as the two monthly DAGs run them): both succeed, the shared GX
    project stays readable, and both months have their Data Docs page and their overview row."""
    ingest.run(spark, lake, "yellow", "2019-03")
    months = (("green", "2023-02"), ("yellow", "2019-03"))
    logs = [(tmp_path / f"{svc}.out", tmp_path / f"{svc}.err") for svc, _ in months]
    procs = [
        subprocess.Popen(
            [taxi_bin(), "validate", "--service", svc, "--month", m],
            env=job_env(lake.lakehouse),
            stdout=out.open("w"),
            stderr=err.open("w"),
        )
        for (svc, m), (out, err) in zip(months, logs, strict=True)
    ]
    results = [
        (p.wait(timeout=900), out.read_text(), err.read_text()) for p, (out, err) in zip(procs, logs, strict=True)
    ]
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    site = lake.reports_dir / "validation" / "gx" / "uncommitted" / "data_docs" / "local_site"
    for (svc, m), (_, out, _) in zip(months, results, strict=True):
        run_id = json.loads(out.strip().splitlines()[-1])["run_id"]
        assert list((site / "validations" / f"{svc}_rows").glob(f"{svc}-{m}-{run_id}/*/*.html")), (svc, m)
        assert run_id in (site / "index.html").read_text()
    overview = (lake.reports_dir / "validation" / "index.html").read_text()
    assert ">2023-02</a>" in overview and ">2019-03</a>" in overview
    import great_expectations as gx

    context = gx.get_context(mode="file", project_root_dir=str(lake.reports_dir / "validation"))
    assert {"green_rows", "yellow_rows"} <= {s.name for s in context.suites.all()}


def test_bronze_rows_from_another_file_than_the_landed_one_are_refused(spark, lake):
    """An interrupted landing or restore leaves bronze and the raw zone on different files: validation says so."""
    manifest = lake.raw_dir / "green" / "2023-02" / "_landing.json"
    landing = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**landing, "checksum": "0" * 64}))
    with pytest.raises(MissingUpstream, match=r"green 2023-02: the bronze rows come from file checksum"):
        validate.run(spark, lake, "green", "2023-02")


@pytest.mark.spark
def test_row_rule_predicates_match_gx_semantics_on_a_tiny_frame(spark):
    """Nulls are ignored by range/set rules and counted by not-null rules, exactly as GX does."""
    df = spark.createDataFrame(
        [(1, 5.0, "Y"), (None, 150.0, "N"), (3, None, "X"), (4, -1.0, None)], "v int, d double, f string"
    )
    suite = validate.Suite(
        "t",
        "0",
        [
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "v"}, "meta": {"rule": "v_nn"}},
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": "d", "min_value": 0, "max_value": {"$PARAMETER": "hi"}},
                "meta": {"rule": "d_range"},
            },
            {
                "type": "expect_column_values_to_be_in_set",
                "kwargs": {"column": "f", "value_set": ["Y", "N"]},
                "meta": {"rule": "f_set"},
            },
        ],
    )
    rows = validate.flag_failures(df, suite, {"hi": 100}).orderBy("d").collect()
    got = {(r.v, r.d): sorted(r.failed_rules) for r in rows}
    assert got == {(1, 5.0): [], (None, 150.0): ["d_range", "v_nn"], (3, None): ["f_set"], (4, -1.0): ["d_range"]}
