"""The policies replayed on the months the real run scored: which version each policy scores a month with, its
errors per week and month, the drift policy's own monitor verdicts, and the real monitor's weeks with the RMSEs that
judge them.

Shared trainings: every policy takes its models from the real run's trainings (one per month, registered whether
the gate promoted them or not), so four policies cost one real run plus the counterfactual predictions. The real
``monthly`` policy is read from ``gold/predictions`` (its numbers are the lakehouse's); a counterfactual version is
predicted from ``silver/features`` with the same code, and only when it differs from the version the real run used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobs.backtest.policies import PolicyState, Sums, Training, WeekFacts
from jobs.models import registry
from jobs.models.inputs import PREDICTION, TARGET
from jobs.models.interval import P10, P90, load_interval
from jobs.models.prediction import predict_minutes
from jobs.models.registry import load_registered
from jobs.monitoring.job import Reference, week_verdict
from jobs.monitoring.stats import retrain_decision
from jobs.monitoring.weeks import complete_weeks, picked_up_in, week_key
from jobs.platform import lakehouse, sql
from jobs.platform.context import RunContext
from jobs.platform.months import week_months

ACTUAL = "actual_duration_min"  # gold/predictions' name of the target


@dataclass
class Replayed:
    """What the replay measured: per policy the version of each month and its error sums per week; the real
    monitor's weeks; the drift policy's own verdicts."""

    months: list[str]
    states: dict[str, PolicyState]
    used: dict[str, dict[str, int]]  # policy -> month -> version that scored it
    sums: dict[str, dict[str, dict[str, Sums]]]  # policy -> month -> week -> error sums
    weeks: list[WeekFacts] = field(default_factory=list)
    drift_verdicts: dict[str, str] = field(default_factory=dict)
    trained_through: dict[int, str] = field(default_factory=dict)

    def month_sums(self, policy: str, month: str) -> Sums:
        return sum(self.sums[policy][month].values(), Sums())

    def week_sums(self, policy: str, week: str) -> Sums:
        return sum((self.sums[policy][m].get(week, Sums()) for m in week_months(week) if m in self.months), Sums())


class Models:
    """Registered versions loaded once each: (model, interval or None, ModelVersion)."""

    def __init__(self, ctx: RunContext):
        self.ctx, self.loaded = ctx, {}

    def get(self, version: int):
        if version not in self.loaded:
            model, mv = load_registered(self.ctx.settings, self.ctx.service, version=version)
            interval = load_interval(mv.tags["interval_uri"]) if mv.tags.get("interval_uri") else None
            self.loaded[version] = (model, interval, mv)
        return self.loaded[version]


def replay(ctx: RunContext, months: list[str], trainings: dict[str, Training], names: list[str]) -> Replayed:
    """Walk the scored months in order: each policy's version per month, its decisions after each month."""
    real = real_versions(ctx, months)
    first = real[months[0]] if months else 0
    out = Replayed(months, {n: PolicyState(n, first) for n in names}, {n: {} for n in names}, {n: {} for n in names})
    models, seen = Models(ctx), set()
    for month in months:
        for name, state in out.states.items():
            out.used[name][month] = real[month] if name == "monthly" else state.version
        new_weeks = [w for w in complete_weeks(out.months[: out.months.index(month) + 1]) if w not in seen]
        seen.update(new_weeks)
        flagged = "drift" in out.states and drift_policy_flags(ctx, out, new_weeks, real, models)
        for state in out.states.values():
            state.after_month(trainings.get(month), flagged)
    measured: dict[tuple[str, int], dict[str, Sums]] = {}  # policies often share a version: measure it once
    for name in names:
        for month in months:
            key = (month, out.used[name][month])
            if key not in measured:
                measured[key] = version_sums(ctx, month, key[1], real[month], models)
            out.sums[name][month] = measured[key]
    out.weeks = real_weeks(ctx, sorted(seen), out if "always" in names else None)
    used = {v for by_month in out.used.values() for v in by_month.values()}
    out.trained_through = {
        v: registry.version(ctx.settings, ctx.service, v).tags.get("trained_through", "") for v in sorted(used)
    }
    return out


def real_versions(ctx: RunContext, months: list[str]) -> dict[str, int]:
    """The version that scored most of each month's trips in ``gold/predictions``."""
    if not months:
        return {}
    rows = (
        lakehouse.read(ctx.spark, ctx.settings, lakehouse.PREDICTIONS)
        .where(sql.matches(service=ctx.service))
        .where(sql.is_in("month", months))
        .groupBy("month", "model_version")
        .count()
        .collect()
    )
    best: dict[str, tuple[int, int]] = {}
    for r in rows:
        if r["count"] > best.get(r.month, (-1, 0))[0]:
            best[r.month] = (r["count"], int(r.model_version))
    return {m: v for m, (_, v) in best.items()}


def error_sums(scored, actual: str) -> dict[str, Sums]:
    """Per ISO week: rows, and over trips of known duration the squared and absolute errors and interval hits."""
    from pyspark.sql import functions as F

    known = F.col("in_training_range")
    err = F.col(PREDICTION) - F.col(actual)
    has_interval = known & F.col(P10).isNotNull()
    inside = has_interval & F.col(actual).between(F.col(P10), F.col(P90))
    rows = (
        scored.groupBy(week_key().alias("week"))
        .agg(
            F.count(F.when(known, 1)).alias("n"),
            F.sum(F.when(known, err * err)).alias("sse"),
            F.sum(F.when(known, F.abs(err))).alias("sae"),
            F.count(F.when(has_interval, 1)).alias("n_interval"),
            F.count(F.when(inside, 1)).alias("inside"),
            F.count(F.lit(1)).alias("rows"),
        )
        .collect()
    )
    return {r.week: Sums(r.n, r.sse or 0.0, r.sae or 0.0, r.n_interval, r.inside, r.rows) for r in rows}


def version_sums(ctx: RunContext, month: str, version: int, real_version: int, models: Models) -> dict[str, Sums]:
    """A month's error sums under ``version``: read from ``gold/predictions`` when the real run scored it with that
    version, otherwise predicted from the month's features."""
    from pyspark.sql import functions as F

    if version == real_version:
        scored = lakehouse.read(ctx.spark, ctx.settings, lakehouse.PREDICTIONS).where(
            lakehouse.partition_predicate(ctx.service, month)
        )
        for c in (P10, P90):  # a table scored before intervals existed
            scored = scored if c in scored.columns else scored.withColumn(c, F.lit(None).cast("double"))
        return error_sums(scored, ACTUAL)
    feats = month_features(ctx, month)
    return error_sums(predicted(feats, version, models, ["pickup_datetime", TARGET, "in_training_range"]), TARGET)


def month_features(ctx: RunContext, month: str):
    return lakehouse.read(ctx.spark, ctx.settings, lakehouse.FEATURES).where(
        lakehouse.partition_predicate(ctx.service, month)
    )


def predicted(feats, version: int, models: Models, keep: list[str]):
    """``feats`` predicted by ``version`` (with its interval when it has one; null bounds otherwise)."""
    from pyspark.sql import functions as F

    model, interval, _ = models.get(version)
    out = predict_minutes(feats, model, keep, interval=interval)
    return (
        out if interval else out.withColumn(P10, F.lit(None).cast("double")).withColumn(P90, F.lit(None).cast("double"))
    )


def drift_policy_flags(ctx: RunContext, out: Replayed, weeks: list[str], real: dict[str, int], models: Models) -> bool:
    """The drift policy's monitor on the weeks this month completed, on its own model's predictions (the real
    monitor's verdict where its versions are the real run's); True when any asks for retraining."""
    state, settings, flagged = out.states["drift"], ctx.settings, False
    real_verdicts = real_verdicts_of(ctx, weeks)
    for week in weeks:
        versions = {m: out.used["drift"][m] for m in week_months(week)}
        earlier = (["none"] * settings.monitor.drift_window + state.verdicts)[-settings.monitor.drift_window :]
        if all(real.get(m) == v for m, v in versions.items()) and week in real_verdicts:
            verdict = real_verdicts[week]
        else:
            current = week_trips(ctx, week, versions, models)
            ref = Reference.of_version(settings, ctx.service, versions[max(versions)])
            verdict = week_verdict(current, ref, settings, week, earlier)["verdict"]
        retrain, _ = retrain_decision(verdict, earlier, settings)
        state.verdicts.append(verdict)
        out.drift_verdicts[week] = verdict
        flagged = flagged or retrain
    return flagged


def week_trips(ctx: RunContext, week: str, versions: dict[str, int], models: Models):
    """A week's trips with their features, each month's predicted by that month's version (what the monitor reads)."""
    from pyspark.sql import functions as F

    parts = []
    for month, version in versions.items():
        feats = month_features(ctx, month).where(picked_up_in(week))
        parts.append(predicted(feats, version, models, feats.columns).withColumn("model_version", F.lit(version)))
    current = parts[0]
    for part in parts[1:]:
        current = current.unionByName(part)
    return current


def real_verdicts_of(ctx: RunContext, weeks: list[str]) -> dict[str, str]:
    return {w.week: w.verdict for w in real_weeks(ctx, weeks, None)}


def real_weeks(ctx: RunContext, weeks: list[str], out: Replayed | None) -> list[WeekFacts]:
    """The real monitor's reports of ``weeks`` (from ``monitoring/drift``), with the freshest model's RMSE on the
    same trips when the ``always`` policy was replayed."""
    if not weeks or not lakehouse.exists(ctx.settings, lakehouse.DRIFT):
        return []
    rows = (
        lakehouse.read(ctx.spark, ctx.settings, lakehouse.DRIFT)
        .where(sql.matches(service=ctx.service))
        .where(sql.is_in("week", weeks))
        .where(sql.is_in("feature", ["_performance", "_reference_performance"]))
        .where(sql.is_in("metric", ["rmse", "reference_rmse"]))
        .select("week", "metric", "value", "verdict")
        .collect()
    )
    facts: dict[str, dict[str, Any]] = {}
    for r in rows:
        facts.setdefault(r.week, {"verdict": r.verdict})[r.metric] = r.value
    return [
        WeekFacts(
            week,
            f["verdict"],
            f.get("rmse"),
            f.get("reference_rmse"),
            out.week_sums("always", week).metrics()["rmse"] if out else None,
        )
        for week, f in sorted(facts.items())
    ]
