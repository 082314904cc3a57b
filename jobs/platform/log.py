"""One log format for every job: ``time level stage service month | message key=value ...``."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-5s %(name)s | %(message)s"


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record is emitted, not as it was at set-up: a caller that swaps
    stderr (pytest's capture, a notebook) and closes its stream afterwards must not break later log lines."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _TerminalFilter(logging.Filter):
    """At INFO and above the terminal shows the jobs' own lines (``taxi.*``) and everyone's errors; the libraries'
    notices and warnings go to the log file only. At DEBUG it shows everything."""

    def __init__(self, everything: bool):
        super().__init__()
        self.everything = everything

    def filter(self, record: logging.LogRecord) -> bool:
        return self.everything or record.name.startswith("taxi") or record.levelno >= logging.ERROR


def setup_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    debug = logging.getLevelName(level) <= logging.DEBUG
    terminal = next((h for h in root.handlers if getattr(h, "_taxi", False)), None)
    if terminal is None:
        terminal = _StderrHandler()
        terminal.setFormatter(logging.Formatter(FORMAT, datefmt="%Y-%m-%dT%H:%M:%S"))
        terminal._taxi = True  # type: ignore[attr-defined]
        root.addHandler(terminal)
    terminal.filters = [_TerminalFilter(everything=debug)]
    root.setLevel(level)
    for noisy in ("py4j", "urllib3", "alembic", "great_expectations", "mlflow.utils", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.captureWarnings(True)  # library warnings become records of ``py.warnings``: the file, not the terminal
    # MLflow gives its loggers a stderr handler of their own when it is imported: its records come through ours.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    mlflow_logger = logging.getLogger("mlflow")
    mlflow_logger.handlers.clear()
    mlflow_logger.propagate = True
    # xgboost.spark's workers log at the level the driver's logger has ("Training on CPUs" for every fit).
    logging.getLogger("XGBoost-PySpark").setLevel(logging.DEBUG if debug else logging.WARNING)
    if not debug:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def log_to_file(path: Path | None) -> Path | None:
    """Also write every record (the libraries' included) to ``path``; returns it, or None where it cannot be
    opened (a read-only install keeps the terminal alone)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, logging.FileHandler) and getattr(handler, "_taxi", False):
            return Path(handler.baseFilename)
    if path is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        return None
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%Y-%m-%dT%H:%M:%S"))
    handler._taxi = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    return path


@contextmanager
def child_output_to_log_file() -> Iterator[None]:
    """Processes started inside the block (the Spark JVM and the Python workers it starts: Ivy's report of every JAR
    it fetches, the JVM's log, the learners' native output) write their stdout and stderr to the log file for their
    lifetime. No log file (the library used from Python), or DEBUG: unchanged."""
    path = log_to_file(None)
    if path is None or logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def jvm_log_options() -> str:
    """Driver JVM options for the project's log4j2 configuration: the JVM's warnings to the log file, errors (and
    at DEBUG, warnings) to the terminal."""
    from jobs.platform.config import PROJECT_ROOT

    debug = logging.getLogger().isEnabledFor(logging.DEBUG)
    log_file = log_to_file(None) or Path(os.devnull)
    return (
        f"-Dlog4j2.configurationFile=file:{PROJECT_ROOT / 'conf' / 'log4j2.properties'} "
        f"-Dtaxi.jvm.console.level={'warn' if debug else 'error'} -Dtaxi.log.file={log_file}"
    )


def kv(**fields: object) -> str:
    return " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())


class JobLog:
    """Logger bound to one job run: every line names the stage, service and month."""

    def __init__(self, stage: str, service: str | None = None, month: str | None = None):
        self.stage, self.service, self.month = stage, service, month
        self._log = logging.getLogger(f"taxi.{stage}")
        self.started = time.monotonic()

    def _prefix(self) -> str:
        return kv(stage=self.stage, **{k: v for k, v in (("service", self.service), ("month", self.month)) if v})

    def info(self, msg: str, **fields: object) -> None:
        self._log.info("%s | %s %s", self._prefix(), msg, kv(**fields))

    def debug(self, msg: str, **fields: object) -> None:
        self._log.debug("%s | %s %s", self._prefix(), msg, kv(**fields))

    def warning(self, msg: str, **fields: object) -> None:
        self._log.warning("%s | %s %s", self._prefix(), msg, kv(**fields))

    def elapsed(self) -> float:
        return time.monotonic() - self.started


@contextmanager
def spark_progress(spark, log: JobLog, every_s: float = 15.0) -> Iterator[None]:
    """Log a progress line for running Spark stages every ``every_s`` seconds while the block runs."""
    stop = threading.Event()
    tracker = spark.sparkContext.statusTracker()

    def report() -> None:
        while not stop.wait(every_s):
            for sid in tracker.getActiveStageIds():
                info = tracker.getStageInfo(sid)
                if info:
                    log.info(
                        "progress",
                        spark_stage=sid,
                        tasks_done=info.numCompletedTasks,
                        tasks_total=info.numTasks,
                        running=info.numActiveTasks,
                        elapsed_s=round(log.elapsed(), 1),
                    )

    t = threading.Thread(target=report, name="spark-progress", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
