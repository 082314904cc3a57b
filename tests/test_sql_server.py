"""The SQL endpoint BI tools connect to: `taxi sql-server` (Spark's Thrift server) on loopback, queried over JDBC
with beeline (the HiveServer2 client shipped in pyspark), the way Tableau, Superset or DBeaver would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.entry.cli import main
from jobs.platform import lakehouse

from .conftest import partition_rows
from .processes import beeline, free_port, job_env, taxi_bin

DEFAULT_TIER = "slow"  # tests without a tier marker of their own


def _outward_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing), or None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        return s.getsockname()[0]


def _taxi(env, *args: str) -> dict:
    out = subprocess.run([taxi_bin(), *args], env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _path_without_virtualenv() -> str:
    """PATH as a new user's shell has it: no activated virtualenv (so `python3` there cannot import `jobs`)."""
    venv_bin = str(Path(sys.executable).parent)
    return os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if d and d != venv_bin)


def test_bi_tools_list_the_tables_and_their_columns_and_read_the_scores_over_jdbc(golden, tmp_path):
    port = free_port()
    env = job_env(golden.settings.lakehouse, TAXI__SPARK__MASTER="local[1]", PATH=_path_without_virtualenv())
    for variable in ("VIRTUAL_ENV", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON"):
        env.pop(variable, None)
    started = _taxi(env, "sql-server", "start", "--port", str(port))
    try:
        assert started["url"] == f"jdbc:hive2://127.0.0.1:{port}/taxi"
        assert _taxi(env, "sql-server", "status", "--port", str(port))["listening"]
        outward = _outward_address()
        if outward and not outward.startswith("127."):
            with socket.socket() as probe:  # bound to loopback only: not reachable on the machine's own address
                probe.settimeout(2)
                assert probe.connect_ex((outward, port)) != 0, outward
        out = beeline(
            port,
            "SHOW TABLES IN taxi;\n!columns predictions\nSELECT month, count(*) AS n, "
            "round(avg(predicted_duration_min), 6) AS mean FROM taxi.predictions GROUP BY month;\n"
            "SELECT 'lineage' AS tag, count(*), min(source_checksum), max(source_checksum), "
            "min(validation_verdict), max(model_version) FROM taxi.prediction_lineage;\n"
            + "".join(f"{path.read_text().rstrip()};\n" for path in BI_QUERIES),
            tmp_path,
        )
        dashboards = _dashboard_queries_through_sqlalchemy(port)
    finally:
        stopped = _taxi(env, "sql-server", "stop", "--port", str(port))
    assert stopped["stopped"]
    assert not _taxi(env, "sql-server", "status", "--port", str(port))["running"]

    for table in lakehouse.ALL_TABLES:  # every table the lakehouse has, by its catalog name
        assert (f"taxi,{table.key}," in out) == lakehouse.exists(golden.settings, table), (table.key, out[:2000])
    assert "taxi,prediction_lineage," in out and not lakehouse.exists(golden.settings, lakehouse.SHADOW_PREDICTIONS)
    # The JDBC column listing names every column of the predictions table with its type.
    preds = partition_rows(golden.settings, lakehouse.PREDICTIONS, "green", "2023-02")
    for column in ("trip_id", "predicted_duration_min", "model_version", "pickup_datetime"):
        assert column in preds.columns
        assert f",predictions,{column}," in out, (column, out[:3000])
    # The numbers a dashboard shows are the table's.
    row = next(line for line in out.splitlines() if line.startswith("2023-02,"))
    _, n, mean = row.split(",")
    assert int(n) == len(preds)
    assert float(mean) == pytest.approx(preds["predicted_duration_min"].mean(), abs=1e-5)
    # Every prediction joins back to one validated trip, its bronze row and the passing validation run.
    landed = json.loads((golden.settings.raw_dir / "green" / "2023-02" / "_landing.json").read_text())
    lineage = next(line for line in out.splitlines() if line.startswith("lineage,")).split(",")
    expected = [str(len(preds)), landed["checksum"], landed["checksum"], "passed", str(preds["model_version"].max())]
    assert lineage == ["lineage", *expected], lineage
    # Every dashboard query ran in beeline (a header line per result), and through SQLAlchemy with the table's numbers.
    for header in ("service,week,model_version,known_trips,rmse", "service,week,borough", "service,week,feature"):
        assert header in out, (header, out[-3000:])
    _check_dashboards(golden.settings, dashboards)


BI_QUERIES = sorted((Path(__file__).resolve().parents[1] / "docs" / "bi").glob("*.sql"))


def _dashboard_queries_through_sqlalchemy(port: int) -> dict:
    """What a dashboard tool connected like Superset (SQLAlchemy with PyHive's `hive://` dialect) lists and reads:
    the tables of `taxi`, the metric table's columns, and every query of docs/bi as pandas."""
    import pandas as pd
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(f"hive://analyst@127.0.0.1:{port}/taxi")
    try:
        with engine.connect() as connection:
            # Spark's SHOW TABLES has three columns (PyHive's inspector would take the first, the database's name).
            out = {
                "tables": [row.tableName for row in connection.execute(text("SHOW TABLES IN taxi"))],
                "columns": [c["name"] for c in inspect(connection).get_columns("accuracy_metrics", schema="taxi")],
            }
            for path in BI_QUERIES:
                out[path.stem] = pd.read_sql_query(text(path.read_text()), connection)
    finally:
        engine.dispose()
    return out


def _check_dashboards(settings, got: dict) -> None:
    from deltalake import DeltaTable

    def table(t):
        return DeltaTable(t.path(settings)).to_pandas()

    assert {"accuracy_metrics", "predictions", "drift"} <= set(got["tables"])
    assert {"window_type", "window", "slice_key", "slice_value", "model_version", "rmse", "coverage"} <= set(
        got["columns"]
    )
    metrics = table(lakehouse.ACCURACY_METRICS)
    weekly = metrics[(metrics.window_type == "week") & metrics.slice_key.isna()].sort_values("window")
    trend = got["accuracy_trend"]
    assert list(trend.week) == list(weekly.window) and len(trend) == 3
    assert list(trend.rmse) == pytest.approx(list(weekly.rmse), abs=1e-9)
    assert list(trend.coverage) == pytest.approx(list(weekly.coverage), abs=1e-9)
    boroughs = metrics[(metrics.window_type == "week") & (metrics.slice_key == "pu_borough") & (metrics.n >= 30)]
    heat = got["borough_heatmap"]
    assert len(heat) == len(boroughs) > 3 and heat.known_trips.min() >= 30
    drift = table(lakehouse.DRIFT)
    assert len(got["drift_strip"]) == int(drift.judged.sum()) > 0
    volumes = got["volumes"]
    preds = table(lakehouse.PREDICTIONS)
    assert list(volumes.trips) == [len(preds)] and list(volumes.month) == ["2023-02"]
    assert volumes.known_trips.item() == int(preds.in_training_range.sum())


@pytest.mark.unit
def test_a_server_on_another_address_than_loopback_needs_authentication(capsys):
    assert main(["sql-server", "start", "--host", "0.0.0.0", "--port", str(free_port())]) == 2
    assert "refusing to listen on 0.0.0.0 without authentication" in capsys.readouterr().err
    from jobs.platform.config import load_settings
    from jobs.platform.sql_server import check_exposure

    settings = load_settings()
    check_exposure(settings, "127.0.0.1")  # loopback: no authentication needed
    settings.sql_server.authentication = "LDAP"
    check_exposure(settings, "0.0.0.0")  # exposed, with LDAP: allowed
