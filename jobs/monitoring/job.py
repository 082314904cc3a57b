"""Monitor: weekly drift and accuracy of the model version that scored the week, to ``monitoring/drift``, MLflow,
an HTML report and a JSON summary.

Reference: the profile stored with that model version at registration, i.e. its validation month as the model
predicted it before the refit (out-of-sample; see :mod:`jobs.models.profile`). Nothing from the training
window is read or re-predicted: the job reads only the week's scored trips (``gold/predictions`` joined with
their features). A week inside the version's training window is reported as ``in_sample`` with no verdict.
Verdict: ``error`` (week RMSE over ``rmse_ratio`` x the reference RMSE, or the absolute ceiling; or the coverage of
the prediction intervals outside [``coverage_min``, ``coverage_max``]), ``drift`` (one
rule per feature type, see :mod:`jobs.monitoring.stats`) or ``ok``; ``retrain`` at once on error and on drift only
when ``drift_weeks`` of the last ``drift_window`` weeks drifted. The Delta table is the source of truth.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

from jobs.models import registry
from jobs.models.binning import binned_counts
from jobs.models.inputs import PREDICTION, TARGET
from jobs.models.profile import accuracy, continuous_sample, profile_parts
from jobs.monitoring import metric_tables, service_page
from jobs.monitoring import shadow_compare as shadow
from jobs.monitoring.report import AccuracyFigures, DriftFigures, html_report, zone_names
from jobs.monitoring.shadow_compare import scoring_version
from jobs.monitoring.stats import drift_metrics, judge_features, retrain_decision, verdict
from jobs.monitoring.weeks import earlier_verdicts, pending_weeks, scored_week
from jobs.platform import lakehouse, sql, storage
from jobs.platform.config import Settings
from jobs.platform.context import RunContext
from jobs.platform.errors import MissingUpstream
from jobs.platform.log import JobLog, spark_progress
from jobs.platform.months import check_service, check_week, week_months
from jobs.platform.tracking import experiment_id, setup_mlflow

# The JSON next to each report: other tooling reads these keys.
SUMMARY_KEYS = (
    "verdict",
    "retrain",
    "drifted_features",
    "performance",
    "reference_performance",
    "model_version",
    "week",
)
DRIFT_SCHEMA = (
    "service string, week string, feature string, metric string, value double, threshold double, drifted boolean, "
    "judged boolean, reference_months string, model_version int, verdict string, retrain boolean, run_id string"
)


def shadow_week(spark, settings: Settings, service: str, week: str, current) -> dict[str, Any] | None:
    """The challenger against the champion on the week's trips both scored; None when nothing ran in shadow."""
    if not lakehouse.exists(settings, lakehouse.SHADOW_PREDICTIONS):
        return None
    return shadow.compare(current, scored_week(spark, settings, service, week, lakehouse.SHADOW_PREDICTIONS))


def accuracy_detail(current, sample_rows: int):
    """Mean residual by hour of week and a predicted-vs-actual sample, over trips with a known duration."""
    from pyspark.sql import functions as F

    known = current.where("in_training_range")
    residuals = [
        r.asDict()
        for r in known.groupBy("hour_of_week")
        .agg(F.avg(F.col(PREDICTION) - F.col(TARGET)).alias("mean_residual"))
        .orderBy("hour_of_week")
        .collect()
    ]
    scatter = known.select(F.col(TARGET).alias("actual"), F.col(PREDICTION).alias("predicted")).limit(sample_rows)
    return residuals, scatter.toPandas()


@dataclass(frozen=True)
class Reference:
    """The model version that scored the week and the out-of-sample profile it was registered with."""

    version: Any  # the MLflow ModelVersion
    profile: dict[str, Any]
    specs: list
    counts: dict
    sample: dict
    performance: dict[str, float]
    seen: str  # the last month the version trained on

    @classmethod
    def of(cls, settings: Settings, service: str, current) -> Reference:
        return cls.of_version(settings, service, scoring_version(current))

    @classmethod
    def of_version(cls, settings: Settings, service: str, number: int) -> Reference:
        mv = registry.version(settings, service, number)
        profile = registry.load_reference_profile(mv)
        specs, counts, sample, performance = profile_parts(profile)
        return cls(mv, profile, specs, counts, sample, performance, registry.trained_through(mv) or profile["month"])


@dataclass
class Measured:
    """What the week's trips show against the reference: drift records and judgements, accuracy, detail plots."""

    rows: int
    counts: dict
    records: list[dict[str, Any]]
    judgements: list[dict[str, Any]]
    performance: dict[str, float]
    residuals: list
    scatter: Any
    shadow: dict[str, Any] | None


def run(spark, settings: Settings, service: str, week: str, fail_on_retrain: bool = False) -> dict[str, Any]:
    check_week(week)
    ctx = RunContext.start("monitor", spark, settings, service, week)
    mlflow = setup_mlflow(settings)
    current, rows = load_week(ctx)
    ref = Reference.of(settings, service, current)
    ctx.log.info("data", reference_month=ref.profile["month"], current_rows=rows, model_version=ref.version.version)
    measured = measure(ctx, current, rows, ref)
    summary = judge(ctx, measured, ref)
    drift_version, trend = write_drift(ctx, summary, measured, ref)
    started = time.perf_counter()
    metric_versions = metric_tables.refresh_week(spark, settings, service, week, ctx.run_id)
    summary["metric_tables_seconds"] = round(time.perf_counter() - started, 2)
    report_path = publish_report(ctx, mlflow, summary, measured, ref, trend)
    summary.update(
        drift_version=drift_version,
        metric_table_versions=metric_versions,
        service_page=str(service_page.publish(spark, settings, service)),
        run_id=ctx.run_id,
    )
    (report_path.parent / f"{week}.json").write_text(json.dumps(summary, indent=1, default=str))
    current.unpersist()
    ctx.log.info(
        "done",
        verdict=summary["verdict"],
        retrain=summary["retrain"],
        drifted=",".join(summary["drifted_features"]) or "none",
        rmse=round(measured.performance.get("rmse", float("nan")), 3),
        report=report_path,
        duration_s=round(ctx.log.elapsed(), 1),
    )
    if fail_on_retrain and summary["retrain"]:
        summary["exit_code"] = 10
    return summary


def load_week(ctx: RunContext):
    """(the week's scored trips with their features, cached; their count): none is an error naming the months."""
    current = scored_week(ctx.spark, ctx.settings, ctx.service, ctx.period).cache()
    rows = current.count()
    if rows == 0:
        raise MissingUpstream(
            f"no scored {ctx.service} trips in week {ctx.period}: run `taxi score` for {week_months(ctx.period)}"
        )
    return current, rows


def measure(ctx: RunContext, current, rows: int, ref: Reference) -> Measured:
    """Drift of every monitored feature and of the predictions, accuracy where durations are known, the shadow."""
    with spark_progress(ctx.spark, ctx.log):
        counts, records, judgements = judge_drift(current, ref, ctx.settings)
        performance = accuracy(current)
        residuals, scatter = accuracy_detail(current, 3000)
        in_shadow = shadow_week(ctx.spark, ctx.settings, ctx.service, ctx.period, current)
    return Measured(rows, counts, records, judgements, performance, residuals, scatter, in_shadow)


def judge_drift(current, ref: Reference, settings: Settings):
    """(the week's binned counts, drift records, per-feature judgements) against the reference."""
    counts = binned_counts(current, ref.specs)
    sample = continuous_sample(current, settings.monitor.sample_rows)
    records = drift_metrics(ref.specs, ref.counts, counts, ref.sample, sample)
    return counts, records, judge_features(ref.specs, records, ref.counts, settings)


def week_verdict(current, ref: Reference, settings: Settings, week: str, earlier: list[str]) -> dict[str, Any]:
    """The monitor's verdict and retrain decision on a week's scored trips, with ``earlier`` as the verdicts of the
    weeks before it: what the backtest asks of a counterfactual model, nothing written."""
    judgements = judge_drift(current, ref, settings)[2]
    performance = accuracy(current)
    result = verdict(judgements, performance, ref.performance, settings, in_sample=week_months(week)[0] <= ref.seen)
    retrain, reason = retrain_decision(result["verdict"], earlier, settings)
    return {**result, "retrain": retrain, "retrain_reason": reason, "rmse": performance.get("rmse")}


def judge(ctx: RunContext, measured: Measured, ref: Reference) -> dict[str, Any]:
    """The week's verdict and retrain decision, as the summary every output carries; the accuracy and shadow facts
    join the drift records."""
    settings, week = ctx.settings, ctx.period
    result = verdict(
        measured.judgements, measured.performance, ref.performance, settings, in_sample=week_months(week)[0] <= ref.seen
    )
    earlier = earlier_verdicts(ctx.spark, settings, ctx.service, week)
    retrain, retrain_reason = retrain_decision(result["verdict"], earlier, settings)
    summary = {
        "service": ctx.service,
        "week": week,
        "model_version": int(ref.version.version),
        "reference": {
            "kind": "out-of-sample validation month, predicted before refit",
            "month": ref.profile["month"],
            "rows": ref.profile["rows"],
            "trained_through": ref.seen,
        },
        "current_rows": measured.rows,
        "known_rows": int(measured.performance.get("n", 0)),
        **result,
        "coverage_range": [settings.monitor.coverage_min, settings.monitor.coverage_max],
        "retrain": retrain,
        "retrain_reason": retrain_reason,
        "features": {
            j["feature"]: {k: j[k] for k in ("rule", "value", "threshold", "fired", "counts", "excluded")}
            for j in measured.judgements
        },
        "performance": {k: v for k, v in measured.performance.items() if not k.startswith("n")},
        "reference_performance": {k: v for k, v in ref.performance.items() if not k.startswith("n")},
        "shadow": measured.shadow,
    }
    measured.records += [
        {"feature": "_performance", "metric": name, "value": value} for name, value in summary["performance"].items()
    ]
    measured.records += [
        {"feature": "_reference_performance", "metric": f"reference_{name}", "value": value}
        for name, value in summary["reference_performance"].items()
    ]
    measured.records += shadow.records(measured.shadow)
    return summary


def write_drift(ctx: RunContext, summary: dict[str, Any], measured: Measured, ref: Reference):
    """(Delta version, RMSE trend): the week's rows replace its earlier ones in ``monitoring/drift``."""
    from pyspark.sql import functions as F

    judged = {(j["feature"], j["rule"]): j for j in measured.judgements}
    rows = [drift_row(r, judged.get((r["feature"], r["metric"])), summary, ref, ctx.run_id) for r in measured.records]
    drift_df = ctx.spark.createDataFrame(rows, DRIFT_SCHEMA).withColumn("computed_at", F.current_timestamp())
    version = lakehouse.replace_where(
        drift_df,
        ctx.settings,
        lakehouse.DRIFT,
        ctx.run_id,
        sql.matches(service=ctx.service, week=ctx.period),
        merge_schema=True,
    )
    history = (
        lakehouse.read(ctx.spark, ctx.settings, lakehouse.DRIFT, version)
        .where(sql.matches(service=ctx.service, feature="_performance", metric="rmse"))
        .select("week", "value")
        .orderBy("week")
        .collect()
    )
    return version, [(r.week, r.value) for r in history]


def drift_row(
    record: dict[str, Any], judged: dict[str, Any] | None, summary: dict[str, Any], ref: Reference, run_id: str
) -> tuple:
    """One ``monitoring/drift`` row (DRIFT_SCHEMA order) of a drift or accuracy record."""
    is_rmse = record["feature"] == "_performance" and record["metric"] == "rmse"
    threshold = judged["threshold"] if judged else (summary["rmse_limit"] if is_rmse else None)
    return (
        summary["service"],
        summary["week"],
        record["feature"],
        record["metric"],
        float(record["value"]),
        threshold,
        bool(judged and judged["fired"]),
        bool(judged and judged["counts"]),
        ref.profile["month"],
        int(ref.version.version),
        summary["verdict"],
        summary["retrain"],
        run_id,
    )


def publish_report(ctx: RunContext, mlflow, summary: dict[str, Any], measured: Measured, ref: Reference, trend):
    """The week's MLflow run (metrics, tags) and its HTML report, in the reports folder and in the run."""
    out_dir = ctx.settings.reports_dir / "drift" / ctx.service
    storage.makedirs(out_dir)
    report_path = out_dir / f"{ctx.period}.html"
    exp = experiment_id(ctx.settings, f"monitor-{ctx.service}")
    mlflow.set_experiment(experiment_id=exp)
    with mlflow.start_run(experiment_id=exp, run_name=f"{ctx.service}-{ctx.period}") as mrun:
        mlflow.log_params(
            {
                "service": ctx.service,
                "week": ctx.period,
                "reference_month": ref.profile["month"],
                "model_version": ref.version.version,
                "current_rows": measured.rows,
            }
        )
        mlflow.log_metrics({_metric_name(r): r["value"] for r in measured.records if not math.isnan(r["value"])})
        mlflow.set_tags({"verdict": summary["verdict"], "retrain": str(summary["retrain"])})
        page = html_report(
            summary,
            DriftFigures(measured.judgements, measured.records, ref.specs, ref.counts, measured.counts),
            zone_names(ctx.settings.data.zone_lookup),
            AccuracyFigures(measured.residuals, measured.scatter, trend),
            mlflow_link(ctx.settings, exp, mrun.info.run_id),
        )
        report_path.write_text(page)
        mlflow.log_text(page, f"report/{report_path.name}")
    summary.update(report=str(report_path), mlflow_run_id=mrun.info.run_id)
    return report_path


def run_pending(spark, settings: Settings, service: str, fail_on_retrain: bool = False) -> dict[str, Any]:
    """Report on every pending week, oldest first (so the N-of-M rule sees them in order); nothing pending is a
    success, not an error."""
    check_service(service)
    weeks = pending_weeks(spark, settings, service)
    log = JobLog("monitor", service, "pending")
    if not weeks:
        log.info("nothing pending", reason="no complete, scored week without a report")
        return {
            "service": service,
            "weeks": {},
            "retrain": False,
            "message": "nothing to monitor: no complete, scored week without a report",
        }
    reports = {w: run(spark, settings, service, w) for w in weeks}
    retrain = any(r["retrain"] for r in reports.values())
    summary = {
        "service": service,
        "weeks": {w: {k: r[k] for k in ("verdict", "retrain", "report")} for w, r in reports.items()},
        "retrain": retrain,
    }
    if fail_on_retrain and retrain:
        summary["exit_code"] = 10
    return summary


def mlflow_link(settings: Settings, experiment: str, run_id: str) -> str:
    """A link to the run when the tracking server has a web UI; otherwise where to find the run."""
    import html

    uri = settings.tracking_uri
    if uri.startswith(("http://", "https://")):
        url = f"{uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"
        return f"<a href='{html.escape(url)}'>run {run_id}</a>"
    return f"run {run_id} in {html.escape(uri)} (open with `mlflow ui --backend-store-uri {html.escape(uri)}`)"


def _metric_name(record: dict[str, Any]) -> str:
    if record["feature"].startswith("_"):  # accuracy records: "rmse", "reference_rmse", "rmse_pu_borough_Queens"
        return record["metric"]
    return f"{record['metric']}_{record['feature']}"
