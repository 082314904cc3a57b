"""One log format for every job: ``time level stage service month | message key=value ...``."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

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


def setup_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_taxi", False) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%Y-%m-%dT%H:%M:%S"))
        handler._taxi = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("py4j", "urllib3", "alembic", "great_expectations", "mlflow.utils", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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
