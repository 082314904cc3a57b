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
            "min(validation_verdict), max(model_version) FROM taxi.prediction_lineage;\n",
            tmp_path,
        )
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
