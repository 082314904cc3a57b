"""The SQL endpoint for BI tools: Spark's Thrift server (the HiveServer2 protocol that Tableau, Power BI, Superset,
Metabase and DBeaver speak over JDBC/ODBC) over the lakehouse tables.

``taxi sql-server start`` launches ``taxi sql-server serve`` through spark-submit (with the Delta JARs and
extensions, on ``spark.master``) as a background process with a pid file and a log; ``serve`` is the driver: it
publishes every existing lakehouse table as a view ``taxi.<name>`` and then starts HiveServer2 on that session
(``HiveThriftServer2.startWithContext``), so the views are current at every start and no second JVM has to share
the metastore. Views, not ``CREATE TABLE ... USING DELTA``: the metastore keeps no columns for a Delta table (they
live in its log), and the JDBC column listing BI tools call (``getColumns``) would come back empty.

Security: the server binds to 127.0.0.1 unless ``sql_server.host`` says otherwise, and refuses any other address
unless ``sql_server.authentication`` is LDAP or CUSTOM (HiveServer2's own mechanisms); TLS is HiveServer2's
``hive.server2.use.SSL`` with a keystore, set through ``sql_server.hive_conf`` (see the README).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from jobs.platform import sql
from jobs.platform.cluster import alive, spark_home
from jobs.platform.config import PROJECT_ROOT, ConfigError, Settings
from jobs.platform.errors import TaxiError
from jobs.platform.log import JobLog

STATE = PROJECT_ROOT / ".cache" / "sql-server"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings, host: str) -> None:
    """A server reachable from other machines must authenticate its users: refuse before starting anything."""
    auth = settings.sql_server.authentication
    if not _loopback(host) and auth == "NONE":
        raise ConfigError(
            f"sql_server: refusing to listen on {host} without authentication; set sql_server.authentication to "
            "LDAP (with sql_server.hive_conf hive.server2.authentication.ldap.url) or CUSTOM, or bind to 127.0.0.1"
        )


def hive_conf(settings: Settings, host: str, port: int) -> dict[str, str]:
    """HiveServer2 settings: address, authentication, and the profile's own additions (TLS, LDAP URL ...)."""
    conf = {
        "hive.server2.thrift.bind.host": host,
        "hive.server2.thrift.port": str(port),
        "hive.server2.transport.mode": "binary",
        "hive.server2.authentication": settings.sql_server.authentication,
        **{k: str(v) for k, v in settings.sql_server.hive_conf.items()},
    }
    return conf


def state_dir(port: int) -> Path:
    return STATE / str(port)


def publish_views(spark, settings: Settings) -> list[str]:
    """``taxi.<name>`` for every existing lakehouse table: a view over the table's current version."""
    from jobs.platform import lakehouse

    spark.sql(f"CREATE DATABASE IF NOT EXISTS {lakehouse.CATALOG_DB}")
    names = []
    for table in lakehouse.ALL_TABLES:
        name = f"{lakehouse.CATALOG_DB}.{table.key}"
        spark.sql(f"DROP VIEW IF EXISTS {name}")
        if lakehouse.exists(settings, table):
            spark.sql(f"CREATE VIEW {name} AS SELECT * FROM {sql.delta_path(table.path(settings))}")
            names.append(name)
    lineage_tables = (lakehouse.PREDICTIONS, lakehouse.TRIPS, lakehouse.BRONZE, lakehouse.VALIDATION_RUNS)
    spark.sql(f"DROP VIEW IF EXISTS {lakehouse.CATALOG_DB}.prediction_lineage")
    if all(lakehouse.exists(settings, t) for t in lineage_tables):
        spark.sql(LINEAGE_VIEW.format(db=lakehouse.CATALOG_DB))
        names.append(f"{lakehouse.CATALOG_DB}.prediction_lineage")
    return names


# One row per prediction: the model that made it and the rows and files it came from (`taxi lineage` adds the MLflow
# run, the training months and the file's recomputed checksum).
LINEAGE_VIEW = """
CREATE VIEW {db}.prediction_lineage AS
SELECT p.service, p.month, p.trip_id, p.model_name, p.model_version, p.features_version, p.scoring_run_id,
       p.scored_at, t.validation_run_id, v.verdict AS validation_verdict, v.suite_versions,
       v.started_at AS validated_at, b.source_file, b.source_checksum, b.ingested_at
FROM {db}.predictions p
JOIN {db}.trips t ON t.service = p.service AND t.month = p.month AND t.trip_id = p.trip_id
JOIN {db}.bronze_trips b ON b.service = t.service AND b.month = t.month AND b.trip_id = t.trip_id
     AND b.duplicate_rank = t.duplicate_rank
LEFT JOIN {db}.validation_runs v ON v.service = t.service AND v.run_id = t.validation_run_id
"""


def session_conf(settings: Settings, host: str, port: int) -> dict[str, str]:
    """The serving session: Hive catalog in a metastore of the server's own (never the jobs'), plus HiveServer2."""
    home = state_dir(port)
    return {
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": str(home / "warehouse"),
        "spark.hadoop.javax.jdo.option.ConnectionURL": f"jdbc:derby:;databaseName={home / 'metastore_db'};create=true",
        "spark.hadoop.hive.exec.scratchdir": str(home / "scratch"),
        "spark.sql.hive.thriftServer.singleSession": "false",
        **{f"spark.hadoop.{k}": v for k, v in hive_conf(settings, host, port).items()},
    }


def serve(settings: Settings, host: str, port: int) -> None:
    """The driver `start` launches: publish the views, start HiveServer2 on this session, serve until stopped."""
    from jobs.platform.spark import get_spark

    check_exposure(settings, host)
    spark = get_spark(settings, app_name="taxi-sql-server", extra_conf=session_conf(settings, host, port))
    names = publish_views(spark, settings)
    jvm = spark.sparkContext._jvm
    for key, value in hive_conf(settings, host, port).items():
        jvm.java.lang.System.setProperty(key, value)  # HiveConf reads its settings from system properties too
    jvm.org.apache.spark.sql.hive.thriftserver.HiveThriftServer2.startWithContext(spark._jsparkSession.sqlContext())
    JobLog("sql-server").info("serving", host=host, port=port, views=",".join(names))
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    while not stop:
        time.sleep(1)
    spark.stop()


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1" if host in ("0.0.0.0", "::") else host, port)) == 0


def _pid(port: int) -> int | None:
    pid_file = state_dir(port) / "server.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text())
    if not alive(pid):
        pid_file.unlink(missing_ok=True)
        return None
    return pid


def submit_env() -> dict[str, str]:
    """spark-submit starts the Python driver with `python3` from PATH unless told otherwise, and outside an activated
    virtualenv that interpreter cannot import `jobs`: the driver runs under the interpreter running this command."""
    return {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}


def start(settings: Settings, host: str, port: int, timeout_s: float) -> dict[str, Any]:
    """Launch `serve` through spark-submit in the background; return once the port answers."""
    from jobs.platform.spark import ensure_jars

    check_exposure(settings, host)
    if _pid(port) is not None or _port_open(host, port):
        raise TaxiError(f"something already listens on {host}:{port}: `taxi sql-server stop --port {port}` first")
    home = state_dir(port)
    for scratch in ("metastore_db", "warehouse", "scratch"):  # the views are published afresh at every start
        shutil.rmtree(home / scratch, ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    jars = ensure_jars(settings)
    command = [
        str(spark_home() / "bin" / "spark-submit"),
        "--master",
        settings.spark.master,
        "--name",
        "taxi-sql-server",
        "--jars",
        ",".join(jars),
        # Also on the driver's own class path: HiveServer2 opens each client session on a thread whose class loader
        # does not see --jars, and the session's catalog (Delta's) would not load.
        "--driver-class-path",
        os.pathsep.join(jars),
        str(Path(__file__).resolve().parents[1] / "entry" / "submit.py"),
        "sql-server",
        "serve",
        "--host",
        host,
        "--port",
        str(port),
    ]
    log_path = home / "server.log"
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=home, env=submit_env(), start_new_session=True
        )
    (home / "server.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + timeout_s
    while not _port_open(host, port):
        if proc.poll() is not None:
            (home / "server.pid").unlink(missing_ok=True)
            tail = log_path.read_text(errors="replace")[-2000:]
            raise TaxiError(f"the SQL server exited with code {proc.returncode} before listening: {log_path}\n{tail}")
        if time.monotonic() > deadline:
            stop(port)
            raise TaxiError(f"the SQL server did not open {host}:{port} in {timeout_s:.0f} s: see {log_path}")
        time.sleep(1)
    return {"url": f"jdbc:hive2://{host}:{port}/taxi", "pid": proc.pid, "log": str(log_path)}


def stop(port: int, timeout_s: float = 60) -> dict[str, Any]:
    pid = _pid(port)
    if pid is None:
        return {"stopped": False, "port": port}
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _pid(port) is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    if _pid(port) is not None:
        os.killpg(pid, signal.SIGKILL)
    (state_dir(port) / "server.pid").unlink(missing_ok=True)
    return {"stopped": True, "port": port, "pid": pid}


def status(host: str, port: int) -> dict[str, Any]:
    pid = _pid(port)
    return {"running": pid is not None, "listening": _port_open(host, port), "pid": pid, "port": port}
