"""The backtest's arithmetic, pure: which model version each retraining policy scores a month with, what the policies
cost, and the monitor judged against reality (hits, false alarms, misses).

Policies (``backtest.policies``), on the same months and the same shared trainings:
- ``monthly``: what the DAGs do, a training per new month and the gate decides (the real run);
- ``frozen``: the first champion forever;
- ``drift``: a training only when the monitor's retrain flag fires on the policy's own predictions;
- ``always``: a training per month, promoted without the gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

ALARMS = {"drift": "drift", "accuracy": "error"}  # alarm kind -> the monitor's verdict that raises it


@dataclass(frozen=True)
class Training:
    """A training the real run did after scoring ``until``: the version it registered (trained through ``until``),
    the real gate's decision, and its wall time."""

    until: str
    version: int
    promoted: bool
    reason: str
    seconds: float


@dataclass
class PolicyState:
    """Where a policy stands while the months are replayed: the version it scores with, and what it paid."""

    name: str
    version: int
    trainings: list[Training] = field(default_factory=list)
    promotions: list[dict[str, Any]] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)  # its own weekly verdicts, oldest first (drift policy)

    def after_month(self, training: Training | None, retrain_flag: bool) -> None:
        """Take the month's shared training where the policy says so (the version then scores the next month)."""
        if training is None or self.name == "frozen":
            return
        if self.name == "drift" and not retrain_flag:
            return
        self.trainings.append(training)
        why = {
            "monthly": f"gate: {training.reason}",
            "always": "always: the month's training, promoted without the gate",
            "drift": "drift: the monitor's retrain flag fired on this policy's weeks",
        }[self.name]
        if self.name == "monthly" and not training.promoted:
            return
        if training.version != self.version:
            self.promotions.append({"month": training.until, "version": training.version, "reason": why})
            self.version = training.version


def policy_summary(state: PolicyState, month_rmses: list[float]) -> dict[str, Any]:
    """Mean RMSE over the months it scored, trainings, their seconds and promotions."""
    known = [r for r in month_rmses if r is not None and not math.isnan(r)]
    return {
        "mean_rmse": round(sum(known) / len(known), 4) if known else None,
        "trainings": len(state.trainings),
        "train_seconds": round(sum(t.seconds for t in state.trainings), 1),
        "promotions": len(state.promotions),
    }


@dataclass(frozen=True)
class WeekFacts:
    """One reported week of the real run: the monitor's verdict and the RMSEs that say whether it was right."""

    week: str
    verdict: str  # ok, drift, error (in_sample weeks are not judged)
    rmse: float | None  # the scoring model's, on the week's trips of known duration
    reference_rmse: float | None  # the reference the monitor compared with
    freshest_rmse: float | None  # the freshest model's (the always policy's) on the same trips


def is_degraded(week: WeekFacts, rmse_ratio: float, degraded_share: float) -> bool:
    """The model really is worse: its RMSE exceeds the reference by the monitor's ratio, or exceeds the freshest
    model's by ``degraded_share`` (strictly: a week exactly at a limit is normal)."""
    if week.rmse is None:
        return False
    over_reference = week.reference_rmse is not None and week.rmse > rmse_ratio * week.reference_rmse
    over_freshest = week.freshest_rmse is not None and week.rmse > (1 + degraded_share) * week.freshest_rmse
    return over_reference or over_freshest


def judge_monitor(weeks: list[WeekFacts], rmse_ratio: float, degraded_share: float) -> dict[str, Any]:
    """Counts of judged weeks, degraded weeks and, per alarm kind (drift, accuracy): alarms, hits (alarms in
    degraded weeks), false alarms (alarms in normal weeks) and misses (degraded weeks without that alarm)."""
    judged = [w for w in weeks if w.verdict in ("ok", "drift", "error")]
    degraded = {w.week for w in judged if is_degraded(w, rmse_ratio, degraded_share)}
    out: dict[str, Any] = {"weeks": len(judged), "degraded": len(degraded)}
    for key in ("alarms", "hits", "false_alarms", "misses"):
        out[key] = {}
    for kind, verdict in ALARMS.items():
        raised = {w.week for w in judged if w.verdict == verdict}
        out["alarms"][kind] = len(raised)
        out["hits"][kind] = len(raised & degraded)
        out["false_alarms"][kind] = len(raised - degraded)
        out["misses"][kind] = len(degraded - raised)
    return out


@dataclass
class Sums:
    """Additive error sums over trips of known duration: weeks across two months add up exactly."""

    n: int = 0
    sse: float = 0.0
    sae: float = 0.0
    n_interval: int = 0
    inside: int = 0
    rows: int = 0  # every scored trip, known duration or not

    def __add__(self, other: Sums) -> Sums:
        return Sums(
            self.n + other.n,
            self.sse + other.sse,
            self.sae + other.sae,
            self.n_interval + other.n_interval,
            self.inside + other.inside,
            self.rows + other.rows,
        )

    def metrics(self) -> dict[str, float | None]:
        return {
            "rmse": round(math.sqrt(self.sse / self.n), 4) if self.n else None,
            "mae": round(self.sae / self.n, 4) if self.n else None,
            "coverage": round(self.inside / self.n_interval, 4) if self.n_interval else None,
        }
