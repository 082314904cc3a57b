"""A real Spark standalone cluster on this machine, from the installed pyspark distribution.

``taxi cluster start`` runs a master and N workers (``spark-class ...Master`` / ``...Worker``) as background
processes with pid files and logs under ``.cache/cluster``; jobs then use ``TAXI__SPARK__MASTER=spark://
127.0.0.1:7077``. ``taxi cluster stop`` ends them. Meant for tests and for trying the cluster path locally;
on a real cluster use its own start scripts or the Docker stack.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from jobs.platform.config import PROJECT_ROOT
from jobs.platform.errors import TaxiError

STATE = PROJECT_ROOT / ".cache" / "cluster"


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _spawn(name: str, args: list[str], env: dict[str, str]) -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    log = open(STATE / f"{name}.log", "ab")  # noqa: SIM115 - handed to the daemon
    proc = subprocess.Popen(
        [str(spark_home() / "bin" / "spark-class"), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # outlives this command, like a daemon
    )
    (STATE / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def start(
    workers: int = 2,
    cores: int = 1,
    memory: str = "2g",
    host: str = "127.0.0.1",
    port: int = 7077,
    timeout_s: float = 60,
) -> dict:
    if _port_open(host, port):
        raise TaxiError(f"something already listens on {host}:{port}: `taxi cluster stop` first")
    env = {**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": host, "PYSPARK_PYTHON": sys.executable}
    master = f"spark://{host}:{port}"
    _spawn(
        "master",
        ["org.apache.spark.deploy.master.Master", "--host", host, "--port", str(port), "--webui-port", "18080"],
        env,
    )
    deadline = time.monotonic() + timeout_s
    while not _port_open(host, port):
        if time.monotonic() > deadline:
            raise TaxiError(f"Spark master did not open {host}:{port} in {timeout_s}s: see {STATE / 'master.log'}")
        time.sleep(0.5)
    for i in range(1, workers + 1):
        work_dir = STATE / f"worker-{i}-work"
        _spawn(
            f"worker-{i}",
            [
                "org.apache.spark.deploy.worker.Worker",
                master,
                "--cores",
                str(cores),
                "--memory",
                memory,
                "--host",
                host,
                "--work-dir",
                str(work_dir),
                "--webui-port",
                str(18080 + i),
            ],
            env,
        )
    wait_for_workers(host, workers, deadline)
    return {"master": master, "workers": workers, "cores_per_worker": cores, "logs": str(STATE)}


def wait_for_workers(host: str, workers: int, deadline: float) -> None:
    """Poll the master's JSON status page until ``workers`` workers are ALIVE."""
    import json
    import urllib.request

    while True:
        try:
            with urllib.request.urlopen(f"http://{host}:18080/json/", timeout=2) as r:
                alive = [w for w in json.load(r)["workers"] if w["state"] == "ALIVE"]
            if len(alive) >= workers:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TaxiError(f"only some of {workers} Spark workers registered: see {STATE}/worker-*.log")
        time.sleep(0.5)


def alive(pid: int) -> bool:
    """Whether the process runs: a zombie (ended, not yet reaped by its parent) does not count."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:  # reaped since os.kill; or a system without /proc, where os.kill's answer stands
        return not Path("/proc").is_dir()


def pids() -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in sorted(STATE.glob("*.pid"))} if STATE.exists() else {}


def kill(name: str, sig: int = signal.SIGTERM) -> None:
    pid = pids().get(name)
    if pid:
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        (STATE / f"{name}.pid").unlink(missing_ok=True)


def stop() -> dict:
    names = list(pids())
    for name in sorted(names, key=lambda n: n == "master"):  # workers first
        kill(name)
    return {"stopped": names}
