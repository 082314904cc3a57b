"""Backtest: replay real months through the live calendar, as the DAGs would, and measure what retraining and
monitoring are worth.

The real run (the ``monthly`` policy) goes through the same jobs the DAGs run, in calendar order. History first:
the window's months before ``--from`` that the lakehouse lacks are landed from the source folder, and with no
champion yet a first training runs on them. Then, per month: land, validate, featurise (the monthly DAG), score
with the champion of that moment, ``monitor --pending`` (the monitoring DAG), and a training until the month (the
new-month rule; the gate decides). A month missing from the folder or rejected is reported and the loop goes on.
Months already scored are not landed or scored again, and a training whose month the champion has seen registers
nothing: a rerun changes nothing in the lakehouse or the registry.

The other policies are counterfactuals scored afterwards from the same trainings (see
:mod:`jobs.backtest.replay`); they write only to the backtest's outputs (:mod:`jobs.backtest.report`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.backtest import replay, report
from jobs.backtest.policies import Training
from jobs.features import job as features
from jobs.ingest import job as ingest
from jobs.models import registry
from jobs.monitoring import job as monitor
from jobs.platform import lakehouse, sql
from jobs.platform.config import Settings
from jobs.platform.context import RunContext
from jobs.platform.errors import InputError, MonthRejected, WindowNotFilled
from jobs.platform.months import add_months, check_month, month_window, months_between
from jobs.platform.tracking import setup_mlflow
from jobs.scoring import job as score
from jobs.training import job as train
from jobs.validation import job as validate


@dataclass(frozen=True)
class MonthOutcome:
    """What became of a month in the real run: ``scored``, ``landed`` (history), ``missing`` or ``rejected``."""

    month: str
    status: str
    detail: str = ""


def run(
    spark, settings: Settings, service: str, first: str, last: str, source_dir, policies: list[str] | None = None
) -> dict[str, Any]:
    check_month(first), check_month(last)
    if last < first:
        raise InputError(f"backtest: --to {last} is before --from {first}")
    ctx = RunContext.start("backtest", spark, settings, service, f"{first}_{last}")
    setup_mlflow(settings)
    folder = Path(source_dir) if source_dir else settings.data.sample_dir / service
    source = ingest.check_source_dir(settings, folder, f"backtest {service}")
    names = policies or settings.backtest.policies
    history = [land(ctx, source, m) for m in month_window(add_months(first, -1), settings.train.months)]
    train_on_history(ctx, add_months(first, -1))
    outcomes = [replay_month(ctx, source, m) for m in month_window(last, months_between(first, last))]
    trainings = registered_trainings(settings, service, first, last)
    real_s = ctx.log.elapsed()
    replayed = replay.replay(ctx, [o.month for o in outcomes if o.status == "scored"], trainings, names)
    seconds = {"real_run": round(real_s, 1), "counterfactuals": round(ctx.log.elapsed() - real_s, 1)}
    result = report.build(ctx, first, last, history + outcomes, replayed)
    paths = report.publish(ctx, result)
    ctx.log.info(
        "done",
        **{f"{p}_rmse": s["mean_rmse"] for p, s in result["policies"].items()},
        json=paths["json"],
        real_run_s=seconds["real_run"],
        counterfactuals_s=seconds["counterfactuals"],
        duration_s=round(ctx.log.elapsed(), 1),
    )
    return {  # the terminal's summary; the JSON file has every month and week
        "months": {m["month"]: m["status"] for m in result["months"]},
        "policies": {p: {k: v for k, v in s.items() if k != "promotion_log"} for p, s in result["policies"].items()},
        "monitor": result["monitor"],
        "seconds": seconds,
        **paths,
    }


def land(ctx: RunContext, source: Path, month: str) -> MonthOutcome:
    """ingest -> validate -> features for a month the lakehouse lacks (the monthly DAG's tasks)."""
    spark, settings, service = ctx.spark, ctx.settings, ctx.service
    if validation_verdict(ctx, month) == "rejected":
        return MonthOutcome(month, "rejected", "rejected by validation before (monitoring/validation_runs)")
    if has_partition(ctx, lakehouse.FEATURES, month):
        return MonthOutcome(month, "landed")  # by an earlier run: the same outcome, so a rerun reads the same
    file = source / f"{service}_tripdata_{month}.parquet"
    if not file.is_file():
        ctx.log.warning("month missing from the source folder", month=month, file=file.name)
        return MonthOutcome(month, "missing", f"{file.name} is not in {source}")
    try:
        ingest.run(spark, settings, service, month, str(file))
        validate.run(spark, settings, service, month)
    except (InputError, MonthRejected) as e:  # reported, not fatal: the next month's run goes on
        ctx.log.warning("month rejected", month=month, reason=str(e))
        return MonthOutcome(month, "rejected", str(e))
    features.run(spark, settings, service, month)
    return MonthOutcome(month, "landed")


def train_on_history(ctx: RunContext, until: str) -> None:
    """With no champion yet, a first training on the history months (it becomes the first champion)."""
    if registry.champion(ctx.settings, ctx.service) is None:
        try_training(ctx, until)


def try_training(ctx: RunContext, until: str) -> None:
    """A training until ``until`` (the gate decides); a window that cannot fill yet (fewer than two feature months)
    is reported and the loop goes on, as the training DAG's failed run would leave the next month to try."""
    try:
        trained = train.run(ctx.spark, ctx.settings, ctx.service, until)
        if trained.get("skipped"):  # the champion has seen the month: a rerun, or a month replayed out of order
            ctx.log.warning("training registered nothing", until=until, reason=trained["skipped"])
    except WindowNotFilled as e:  # anything else missing is a real failure, not a month to pass over
        ctx.log.warning("no training", until=until, reason=str(e))


def replay_month(ctx: RunContext, source: Path, month: str) -> MonthOutcome:
    """One month of the live calendar: the monthly DAG (land, score), the monitoring DAG (every week this month
    completes) and the training DAG (until this month; the gate decides)."""
    spark, settings, service = ctx.spark, ctx.settings, ctx.service
    if has_partition(ctx, lakehouse.PREDICTIONS, month):
        outcome = MonthOutcome(month, "scored")  # by an earlier run
    else:
        outcome = land(ctx, source, month)
        if outcome.status != "landed":
            return outcome
        if score.run(spark, settings, service, month, skip_if_no_model=True).get("skipped"):
            outcome = MonthOutcome(month, "landed", "not scored: no champion yet")
        else:
            outcome = MonthOutcome(month, "scored")
    monitor.run_pending(spark, settings, service)
    try_training(ctx, month)  # registers nothing when the champion has seen the month
    return outcome


def registered_trainings(settings: Settings, service: str, first: str, last: str) -> dict[str, Training]:
    """The trainings of the replayed months, from the registry (so a rerun reads the same ones): per month, the
    newest version validated on it."""
    found = {}
    for mv in registry.versions(settings, service):
        until = mv.tags.get("valid_month", "")
        if first <= until <= last:
            found[until] = Training(
                until,
                int(mv.version),
                mv.tags.get("gate") == "promoted",
                mv.tags.get("rejected_reason", "beat the champion on a month neither saw"),
                round(registry.training_seconds(mv), 1),
            )
    return found


def has_partition(ctx: RunContext, table, month: str) -> bool:
    if not lakehouse.exists(ctx.settings, table):
        return False
    rows = lakehouse.read(ctx.spark, ctx.settings, table).where(lakehouse.partition_predicate(ctx.service, month))
    return rows.limit(1).count() > 0


def validation_verdict(ctx: RunContext, month: str) -> str | None:
    """The month's latest validation verdict, or None when it was never validated."""
    if not lakehouse.exists(ctx.settings, lakehouse.VALIDATION_RUNS):
        return None
    latest = (
        lakehouse.read(ctx.spark, ctx.settings, lakehouse.VALIDATION_RUNS)
        .where(sql.matches(service=ctx.service, month=month))
        .orderBy("started_at", ascending=False)
        .select("verdict")
        .first()
    )
    return latest.verdict if latest else None
