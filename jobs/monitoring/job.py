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

import datetime as dt
import json
import math
from typing import Any

from jobs.models import registry
from jobs.models.binning import binned_counts
from jobs.models.inputs import PREDICTION, TARGET
from jobs.models.interval import P10, P90
from jobs.models.profile import accuracy, continuous_sample, profile_parts
from jobs.monitoring import shadow_compare as shadow
from jobs.monitoring.report import html_report, zone_names
from jobs.monitoring.shadow_compare import scoring_version
from jobs.monitoring.stats import drift_metrics, judge_features, retrain_decision, verdict
from jobs.platform import lakehouse, storage
from jobs.platform.config import Settings
from jobs.platform.errors import MissingUpstream
from jobs.platform.log import JobLog, spark_progress
from jobs.platform.months import add_weeks, check_service, check_week, month_start, wall_clock, week_bounds, week_months
from jobs.platform.tracking import experiment_id, setup_mlflow

# The JSON next to each report: other tooling reads these keys.
SUMMARY_KEYS = ("verdict", "retrain", "drifted_features", "performance", "reference_performance", "model_version",
                "week")  # fmt: skip
DRIFT_SCHEMA = (
    "service string, week string, feature string, metric string, value double, threshold double, drifted boolean, "
    "judged boolean, reference_months string, model_version int, verdict string, retrain boolean, run_id string"
)


def scored_week(spark, settings: Settings, service: str, week: str, table=lakehouse.PREDICTIONS):
    """The week's trips scored into ``table`` with their features (only the week's month partitions are read)."""
    from pyspark.sql import functions as F

    if not lakehouse.exists(settings, table):
        raise MissingUpstream(f"{table.relpath} is empty: run `taxi score --service {service}` for {week} first")
    start, end = week_bounds(week)
    months = week_months(week)
    scored = lakehouse.read(spark, settings, table)
    # Intervals: null for trips scored before the model had them (an older table lacks the columns altogether).
    bounds = [F.col(c) if c in scored.columns else F.lit(None).cast("double").alias(c) for c in (P10, P90)]
    preds = (
        scored.where(F.col("service") == service)
        .where(F.col("month").isin(months))
        .where((F.col("pickup_datetime") >= wall_clock(start)) & (F.col("pickup_datetime") < wall_clock(end)))
        .select("trip_id", PREDICTION, *bounds, "model_version")
    )
    feats = lakehouse.read(spark, settings, lakehouse.FEATURES).where(F.col("service") == service)
    return feats.where(F.col("month").isin(months)).join(preds, "trip_id")


def shadow_week(spark, settings: Settings, service: str, week: str, current) -> dict[str, Any] | None:
    """The challenger against the champion on the week's trips both scored; None when nothing ran in shadow."""
    if not lakehouse.exists(settings, lakehouse.SHADOW_PREDICTIONS):
        return None
    return shadow.compare(current, scored_week(spark, settings, service, week, lakehouse.SHADOW_PREDICTIONS))


def earlier_verdicts(spark, settings: Settings, service: str, week: str) -> list[str]:
    """Verdicts of the ``drift_window - 1`` weeks before ``week``, oldest first ("none" where no report)."""
    weeks = [add_weeks(week, -k) for k in range(settings.monitor.drift_window - 1, 0, -1)]
    if not weeks or not lakehouse.exists(settings, lakehouse.DRIFT):
        return ["none"] * len(weeks)
    rows = (
        lakehouse.read(spark, settings, lakehouse.DRIFT)
        .where(f"service = '{service}'")
        .where(lakehouse_in("week", weeks))
        .select("week", "verdict")
        .distinct()
        .collect()
    )
    found = {r.week: r.verdict for r in rows}
    return [found.get(w, "none") for w in weeks]


def lakehouse_in(column: str, values: list[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


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


def run(spark, settings: Settings, service: str, week: str, fail_on_retrain: bool = False) -> dict[str, Any]:
    from pyspark.sql import functions as F

    check_service(service)
    check_week(week)
    log = JobLog("monitor", service, week)
    mlflow = setup_mlflow(settings)
    current = scored_week(spark, settings, service, week).cache()
    n_current = current.count()
    if n_current == 0:
        raise MissingUpstream(f"no scored {service} trips in week {week}: run `taxi score` for {week_months(week)}")
    mv = registry.version(settings, service, scoring_version(current))
    specs, ref_counts, ref_sample, ref_perf = profile_parts(profile := registry.load_reference_profile(mv))
    seen = registry.trained_through(mv) or profile["month"]
    log.info("data", reference_month=profile["month"], current_rows=n_current, model_version=mv.version)

    with spark_progress(spark, log):
        cur_counts = binned_counts(current, specs)
        records = drift_metrics(specs, ref_counts, cur_counts, ref_sample,
                                continuous_sample(current, settings.monitor.sample_rows))  # fmt: skip
        judgements = judge_features(specs, records, ref_counts, settings)
        perf = accuracy(current)
        residuals, scatter = accuracy_detail(current, 3000)
        in_shadow = shadow_week(spark, settings, service, week, current)
    result = verdict(judgements, perf, ref_perf, settings, in_sample=week_months(week)[0] <= seen)
    retrain, retrain_reason = retrain_decision(result["verdict"], earlier_verdicts(spark, settings, service, week),
                                               settings)  # fmt: skip
    summary = {
        "service": service,
        "week": week,
        "model_version": int(mv.version),
        "reference": {
            "kind": "out-of-sample validation month, predicted before refit",
            "month": profile["month"],
            "rows": profile["rows"],
            "trained_through": seen,
        },  # fmt: skip
        "current_rows": n_current,
        "known_rows": int(perf.get("n", 0)),
        **result,
        "coverage_range": [settings.monitor.coverage_min, settings.monitor.coverage_max],
        "retrain": retrain,
        "retrain_reason": retrain_reason,
        "features": {
            j["feature"]: {k: j[k] for k in ("rule", "value", "threshold", "fired", "counts", "excluded")}
            for j in judgements
        },  # fmt: skip
        "performance": {k: v for k, v in perf.items() if not k.startswith("n")},
        "reference_performance": {k: v for k, v in ref_perf.items() if not k.startswith("n")},
        "shadow": in_shadow,
    }
    for name, value in summary["performance"].items():
        records.append({"feature": "_performance", "metric": name, "value": value})
    for name, value in summary["reference_performance"].items():
        records.append({"feature": "_reference_performance", "metric": f"reference_{name}", "value": value})
    records += shadow.records(in_shadow)

    run_id = lakehouse.new_run_id("monitor")
    judged = {(j["feature"], j["rule"]): j for j in judgements}

    def row(r):
        j = judged.get((r["feature"], r["metric"]))
        threshold = j["threshold"] if j else (result["rmse_limit"] if r["feature"] == "_performance"
                                              and r["metric"] == "rmse" else None)  # fmt: skip
        return (service, week, r["feature"], r["metric"], float(r["value"]), threshold, bool(j and j["fired"]),
                bool(j and j["counts"]), profile["month"], int(mv.version), result["verdict"], retrain,
                run_id)  # fmt: skip

    drift_df = spark.createDataFrame([row(r) for r in records], DRIFT_SCHEMA).withColumn(
        "computed_at", F.current_timestamp()
    )
    version = lakehouse.replace_where(drift_df, settings, lakehouse.DRIFT, run_id,
                                      f"service = '{service}' AND week = '{week}'", merge_schema=True)  # fmt: skip
    history = (
        lakehouse.read(spark, settings, lakehouse.DRIFT, version)
        .where(f"service = '{service}' AND feature = '_performance' AND metric = 'rmse'")
        .select("week", "value")
        .orderBy("week")
        .collect()
    )
    out_dir = settings.reports_dir / "drift" / service
    storage.makedirs(out_dir)
    report_path = out_dir / f"{week}.html"
    exp = experiment_id(settings, f"monitor-{service}")
    mlflow.set_experiment(experiment_id=exp)
    with mlflow.start_run(experiment_id=exp, run_name=f"{service}-{week}") as mrun:
        mlflow.log_params({"service": service, "week": week, "reference_month": profile["month"],
                           "model_version": mv.version, "current_rows": n_current})  # fmt: skip
        mlflow.log_metrics({_metric_name(r): r["value"] for r in records if not math.isnan(r["value"])})
        mlflow.set_tags({"verdict": result["verdict"], "retrain": str(retrain)})
        trend = [(r.week, r.value) for r in history]
        page = html_report(summary, judgements, records, specs, ref_counts, cur_counts,
                           zone_names(settings.data.zone_lookup), residuals, scatter, trend,
                           mlflow_link(settings, exp, mrun.info.run_id))  # fmt: skip
        report_path.write_text(page)
        mlflow.log_text(page, f"report/{report_path.name}")
    summary.update(report=str(report_path), drift_version=version, run_id=run_id, mlflow_run_id=mrun.info.run_id)
    (out_dir / f"{week}.json").write_text(json.dumps(summary, indent=1, default=str))
    current.unpersist()
    log.info(
        "done",
        verdict=result["verdict"],
        retrain=retrain,
        drifted=",".join(result["drifted_features"]) or "none",
        rmse=round(perf.get("rmse", float("nan")), 3),
        report=report_path,
        duration_s=round(log.elapsed(), 1),
    )
    if fail_on_retrain and retrain:
        summary["exit_code"] = 10
    return summary


def complete_weeks(months: list[str]) -> list[str]:
    """ISO weeks all of whose days lie in ``months`` (a week spanning two months needs both), oldest first."""
    have = set(months)
    weeks = set()
    for month in have:
        day = month_start(month)
        while day.strftime("%Y-%m") == month:
            year, number, _ = day.isocalendar()
            week = f"{year}-W{number:02d}"
            if set(week_months(week)) <= have:
                weeks.add(week)
            day += dt.timedelta(days=1)
    return sorted(weeks)


def pending_weeks(spark, settings: Settings, service: str) -> list[str]:
    """Complete ISO weeks of the scored months that have no report yet."""
    if not lakehouse.exists(settings, lakehouse.PREDICTIONS):
        return []
    scored = [r.month for r in lakehouse.read(spark, settings, lakehouse.PREDICTIONS)
              .where(lakehouse.partition_predicate(service)).select("month").distinct().collect()]  # fmt: skip
    done = set()
    if lakehouse.exists(settings, lakehouse.DRIFT):
        done = {r.week for r in lakehouse.read(spark, settings, lakehouse.DRIFT)
                .where(f"service = '{service}'").select("week").distinct().collect()}  # fmt: skip
    return [w for w in complete_weeks(scored) if w not in done]


def run_pending(spark, settings: Settings, service: str, fail_on_retrain: bool = False) -> dict[str, Any]:
    """Report on every pending week, oldest first (so the N-of-M rule sees them in order); nothing pending is a
    success, not an error."""
    check_service(service)
    weeks = pending_weeks(spark, settings, service)
    log = JobLog("monitor", service, "pending")
    if not weeks:
        log.info("nothing pending", reason="no complete, scored week without a report")
        return {"service": service, "weeks": {}, "retrain": False,
                "message": "nothing to monitor: no complete, scored week without a report"}  # fmt: skip
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
