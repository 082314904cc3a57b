"""Monitor: weekly drift and accuracy of the champion, to ``monitoring/drift``, MLflow and an HTML report.

Reference: the champion's own training window (its registered version's training run names the months).
Current: the week's scored trips (``gold/predictions`` joined with their features). For every monitored feature
and for the predictions, bins are fixed from the reference (quantiles for continuous features, the most
frequent values for categorical ones, plus "other" and "missing"), both sides are counted in Spark in one pass
each, and PSI and Jensen-Shannon distance come from those counts; Kolmogorov-Smirnov and Wasserstein distances
are computed on a sample for continuous features. Accuracy (RMSE, MAE, bias, overall and by borough) is computed
where actual durations are known. The verdict ("drift", "error" or "ok") and a ``retrain`` flag drive the
Airflow DAG; the Spark aggregates in the Delta table are the source of truth.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass
from typing import Any

from . import lakehouse
from .config import Settings
from .errors import MissingUpstream
from .features import TARGET
from .log import JobLog, spark_progress
from .modeling import PREDICTION, experiment_id, load_registered, predict_minutes, regression_metrics, setup_mlflow
from .months import check_service, check_week, week_bounds, week_months

CONTINUOUS = [
    "trip_distance",
    "pickup_hour",
    "hour_of_week",
    "centroid_distance_km",
    "centroid_bearing_deg",
    "hist_median_duration_min",
    "hist_median_speed_mph",
    "hist_trip_count",
]
CATEGORICAL = [
    "PULocationID",
    "DOLocationID",
    "pu_borough_code",
    "do_borough_code",
    "pu_airport",
    "do_airport",
    "day_of_week",
    "is_holiday",
    "VendorID",
    "RatecodeID",
    "trip_type",
    "passenger_count",
    "hist_level",
]
MAX_CATEGORIES = 40
EPS = 1e-4
MISSING, OTHER = -1, -2


@dataclass
class BinSpec:
    feature: str
    kind: str  # continuous | categorical
    edges: list[float] | None = None  # continuous: inner edges (bins: (-inf,e0], (e0,e1], ..., (en,inf))
    categories: list[float] | None = None  # categorical: one bin each, then OTHER

    def labels(self) -> list[int]:
        n = len(self.edges) + 1 if self.kind == "continuous" else len(self.categories)
        return [*range(n), OTHER, MISSING] if self.kind == "categorical" else [*range(n), MISSING]


# ---------------------------------------------------------------------------------------------------------------
# Pure math (hand-checked in tests)
# ---------------------------------------------------------------------------------------------------------------
def proportions(counts: list[float]) -> list[float]:
    total = sum(counts)
    return [(c / total if total else 0.0) for c in counts]


def psi(reference: list[float], current: list[float], eps: float = EPS) -> float:
    """Population stability index of two binned count vectors (zero shares smoothed to ``eps``)."""
    r = [max(p, eps) for p in proportions(reference)]
    c = [max(p, eps) for p in proportions(current)]
    return sum((ci - ri) * math.log(ci / ri) for ri, ci in zip(r, c, strict=True))


def js_distance(reference: list[float], current: list[float]) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]): the square root of the JS divergence."""
    p, q = proportions(reference), proportions(current)
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]

    def kl(x, y):
        return sum(a * math.log2(a / b) for a, b in zip(x, y, strict=True) if a > 0)

    return math.sqrt(max(0.0, (kl(p, m) + kl(q, m)) / 2))


# ---------------------------------------------------------------------------------------------------------------
# Spark side: bins from the reference, counts for both sides in one pass each
# ---------------------------------------------------------------------------------------------------------------
def bin_specs(reference, bins: int) -> list[BinSpec]:
    from pyspark.sql import functions as F

    specs = []
    probs = [i / bins for i in range(1, bins)]
    quantiles = reference.approxQuantile([*CONTINUOUS, PREDICTION], probs, 0.001)
    for feature, qs in zip([*CONTINUOUS, PREDICTION], quantiles, strict=True):
        specs.append(BinSpec(feature, "continuous", edges=sorted(set(qs))))
    for feature in CATEGORICAL:
        top = (
            reference.where(F.col(feature).isNotNull())
            .groupBy(feature)
            .count()
            .orderBy(F.desc("count"), feature)
            .limit(MAX_CATEGORIES)
            .collect()
        )
        specs.append(BinSpec(feature, "categorical", categories=sorted(float(r[0]) for r in top)))
    return specs


def _bin_expr(spec: BinSpec):
    from pyspark.sql import functions as F

    col = F.col(spec.feature).cast("double")
    expr = F.lit(MISSING)
    if spec.kind == "continuous":
        inner = F.lit(len(spec.edges))
        for i, edge in reversed(list(enumerate(spec.edges))):
            inner = F.when(col <= edge, F.lit(i)).otherwise(inner)
        return F.when(col.isNull() | F.isnan(col), expr).otherwise(inner)
    inner = F.lit(OTHER)
    for i, cat in enumerate(spec.categories):
        inner = F.when(col == cat, F.lit(i)).otherwise(inner)
    return F.when(col.isNull(), expr).otherwise(inner)


def binned_counts(df, specs: list[BinSpec]) -> dict[str, dict[int, int]]:
    """{feature: {bin: count}} for every spec, from one scan of ``df``."""
    from pyspark.sql import functions as F

    pairs = F.array(*[F.struct(F.lit(s.feature).alias("f"), _bin_expr(s).alias("b")) for s in specs])
    rows = df.select(F.explode(pairs).alias("p")).groupBy("p.f", "p.b").count().collect()
    out: dict[str, dict[int, int]] = {s.feature: {} for s in specs}
    for r in rows:
        out[r["f"]][int(r["b"])] = int(r["count"])
    return out


def drift_metrics(specs, ref_counts, cur_counts, ref_sample=None, cur_sample=None) -> list[dict[str, Any]]:
    """One record per feature and metric: psi, js_distance (all), ks, wasserstein (continuous, on samples)."""
    from scipy import stats

    records = []
    for s in specs:
        labels = s.labels()
        r = [ref_counts[s.feature].get(b, 0) for b in labels]
        c = [cur_counts[s.feature].get(b, 0) for b in labels]
        records.append({"feature": s.feature, "metric": "psi", "value": psi(r, c)})
        records.append({"feature": s.feature, "metric": "js_distance", "value": js_distance(r, c)})
        if s.kind == "continuous" and ref_sample is not None and cur_sample is not None:
            a, b = ref_sample[s.feature].dropna(), cur_sample[s.feature].dropna()
            if len(a) and len(b):
                records.append({"feature": s.feature, "metric": "ks", "value": float(stats.ks_2samp(a, b).statistic)})
                records.append(
                    {"feature": s.feature, "metric": "wasserstein", "value": float(stats.wasserstein_distance(a, b))}
                )
    return records


def verdict(records: list[dict[str, Any]], perf: dict[str, float], settings: Settings) -> dict[str, Any]:
    """Per-feature drift flags, the overall verdict and whether to retrain."""
    m = settings.monitor
    drifted = sorted(
        {
            r["feature"]
            for r in records
            if (r["metric"] == "psi" and r["value"] > m.psi_threshold)
            or (r["metric"] == "js_distance" and r["value"] > m.js_threshold)
        }
    )
    features = {r["feature"] for r in records if r["feature"] != PREDICTION}
    share = len([f for f in drifted if f != PREDICTION]) / max(1, len(features))
    drift = share >= m.share_of_drifted_features or PREDICTION in drifted
    error = perf.get("rmse") is not None and perf["rmse"] > m.rmse_threshold
    return {
        "verdict": "error" if error else ("drift" if drift else "ok"),
        "retrain": bool(drift or error),
        "drifted_features": drifted,
        "drifted_share": round(share, 4),
    }


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------
def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def html_report(service: str, week: str, summary: dict, records, specs, ref_counts, cur_counts, perf_history):
    """A self-contained HTML page: verdict, per-feature table, histograms of the most drifted, RMSE over weeks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_feature: dict[str, dict[str, float]] = {}
    for r in records:
        by_feature.setdefault(r["feature"], {})[r["metric"]] = r["value"]
    ranked = sorted(by_feature.items(), key=lambda kv: -kv[1].get("psi", 0))
    spec_of = {s.feature: s for s in specs}
    images = []
    for feature, _ in ranked[:4]:
        s = spec_of[feature]
        labels = s.labels()
        r = proportions([ref_counts[feature].get(b, 0) for b in labels])
        c = proportions([cur_counts[feature].get(b, 0) for b in labels])
        fig, ax = plt.subplots(figsize=(6, 3))
        x = list(range(len(labels)))
        ax.bar([i - 0.2 for i in x], r, width=0.4, label="reference")
        ax.bar([i + 0.2 for i in x], c, width=0.4, label=f"week {week}")
        ax.set_title(f"{feature}: PSI {by_feature[feature].get('psi', 0):.3f}")
        ax.set_xlabel("bin (reference quantiles / top categories; last: missing)")
        ax.legend()
        images.append(_png(fig))
        plt.close(fig)
    if perf_history:
        fig, ax = plt.subplots(figsize=(6, 3))
        weeks = [w for w, _ in perf_history]
        ax.plot(weeks, [v for _, v in perf_history], marker="o")
        ax.set_title("RMSE (minutes) over weeks")
        ax.tick_params(axis="x", rotation=45)
        images.append(_png(fig))
        plt.close(fig)
    rows = "".join(
        f"<tr class='{'drift' if f in summary['drifted_features'] else ''}'><td>{html.escape(f)}</td>"
        + "".join(f"<td>{m.get(k, float('nan')):.4f}</td>" for k in ("psi", "js_distance", "ks", "wasserstein"))
        + "</tr>"
        for f, m in ranked
    )
    perf = summary.get("performance", {})
    perf_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>" for k, v in sorted(perf.items()))
    imgs = "".join(f"<img src='data:image/png;base64,{i}'/>" for i in images)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Drift report {service} {week}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;
padding:3px 8px}} tr.drift{{background:#fdd}} .verdict{{font-size:1.4em}}</style></head><body>
<h1>Drift report: {service}, week {week}</h1>
<p class="verdict" id="verdict">Verdict: <b>{summary["verdict"]}</b> (retrain: {summary["retrain"]})</p>
<p>Reference: months {", ".join(summary["reference_months"])} (champion v{summary["model_version"]});
current: {summary["current_rows"]} scored trips. Drifted: {", ".join(summary["drifted_features"]) or "none"}.</p>
<h2>Features</h2><table id="features"><tr><th>feature</th><th>PSI</th><th>JS distance</th><th>KS</th>
<th>Wasserstein</th></tr>{rows}</table>
<h2>Accuracy (trips with known duration, 1-60 min)</h2><table id="performance">{perf_rows}</table>
<h2>Plots</h2>{imgs}</body></html>"""


# ---------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------
def reference_months(champion_mv, mlflow) -> list[str]:
    run = mlflow.get_run(champion_mv.tags["training_run_id"])
    parent = mlflow.get_run(run.data.tags["mlflow.parentRunId"]) if "mlflow.parentRunId" in run.data.tags else run
    months = parent.data.params["train_months"].split(",")
    return [*months, parent.data.params["valid_month"]]


def run(spark, settings: Settings, service: str, week: str, fail_on_retrain: bool = False) -> dict[str, Any]:
    from pyspark.sql import functions as F

    check_service(service)
    check_week(week)
    log = JobLog("monitor", service, week)
    mlflow = setup_mlflow(settings)
    model, mv = load_registered(settings, service, alias="champion")
    ref_months = reference_months(mv, mlflow)
    start, end = week_bounds(week)
    if not lakehouse.exists(settings, lakehouse.PREDICTIONS):
        raise MissingUpstream(f"gold/predictions is empty: run `taxi score --service {service}` for {week} first")
    feats = lakehouse.read(spark, settings, lakehouse.FEATURES).where(F.col("service") == service)
    preds = (
        lakehouse.read(spark, settings, lakehouse.PREDICTIONS)
        .where(F.col("service") == service)
        .where(F.col("month").isin(week_months(week)))
        .where((F.col("pickup_datetime") >= start) & (F.col("pickup_datetime") < end))
        .select("trip_id", PREDICTION, "model_version")
    )
    current = feats.where(F.col("month").isin(week_months(week))).join(preds, "trip_id").cache()
    n_current = current.count()
    if n_current == 0:
        raise MissingUpstream(f"no scored {service} trips in week {week}: run `taxi score` for {week_months(week)}")
    reference = predict_minutes(
        feats.where(F.col("month").isin(ref_months)),
        model,
        [*CONTINUOUS, *CATEGORICAL, TARGET, "pu_borough", "in_training_range"],  # fmt: skip
    ).cache()
    log.info("data", reference_months=",".join(ref_months), current_rows=n_current, model_version=mv.version)

    with spark_progress(spark, log):
        specs = bin_specs(reference, settings.monitor.bins)
        ref_counts, cur_counts = binned_counts(reference, specs), binned_counts(current, specs)
        n = settings.monitor.sample_rows
        cols = [*CONTINUOUS, PREDICTION]
        ref_sample = reference.select(*cols).sample(min(1.0, n / max(1, reference.count())), seed=1).toPandas()
        cur_sample = current.select(*cols).sample(min(1.0, n / n_current), seed=1).toPandas()
        records = drift_metrics(specs, ref_counts, cur_counts, ref_sample, cur_sample)
        known = current.where(F.col("in_training_range"))  # actual duration known and in the modelled range
        perf = regression_metrics(known)
        perf.update({k: v for k, v in regression_metrics(known, by="pu_borough").items() if k.startswith("rmse_")})
        ref_perf = regression_metrics(reference.where("in_training_range"))
    summary = {
        "service": service,
        "week": week,
        "reference_months": ref_months,
        "model_version": int(mv.version),
        "current_rows": n_current,
        **verdict(records, perf, settings),
        "performance": {k: v for k, v in perf.items() if not k.startswith("n")},
        "reference_performance": {k: v for k, v in ref_perf.items() if k != "n"},
    }
    for name, value in summary["performance"].items():
        records.append({"feature": "_performance", "metric": name, "value": value})
    for name, value in summary["reference_performance"].items():
        records.append({"feature": "_reference_performance", "metric": f"reference_{name}", "value": value})

    run_id = lakehouse.new_run_id("monitor")
    drifted = set(summary["drifted_features"])
    rows = [
        (service, week, r["feature"], r["metric"], float(r["value"]), _threshold(r["metric"], settings),
         r["feature"] in drifted, ",".join(ref_months), int(mv.version), summary["verdict"], run_id)
        for r in records
    ]  # fmt: skip
    schema = (
        "service string, week string, feature string, metric string, value double, threshold double, "
        "drifted boolean, reference_months string, model_version int, verdict string, run_id string"
    )
    drift_df = spark.createDataFrame(rows, schema).withColumn("computed_at", F.current_timestamp())
    version = lakehouse.replace_where(
        drift_df, settings, lakehouse.DRIFT, run_id, f"service = '{service}' AND week = '{week}'"
    )
    history = (
        lakehouse.read(spark, settings, lakehouse.DRIFT, version)
        .where(f"service = '{service}' AND feature = '_performance' AND metric = 'rmse'")
        .select("week", "value")
        .orderBy("week")
        .collect()
    )
    report = html_report(service, week, summary, records, specs, ref_counts, cur_counts,
                         [(r.week, r.value) for r in history])  # fmt: skip
    out_dir = settings.reports_dir / "drift" / service
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / f"{week}.html"
    report_path.write_text(report)
    summary.update(report=str(report_path), drift_version=version, run_id=run_id)
    (out_dir / f"{week}.json").write_text(json.dumps(summary, indent=1, default=str))

    exp = experiment_id(settings, f"monitor-{service}")
    mlflow.set_experiment(experiment_id=exp)
    with mlflow.start_run(experiment_id=exp, run_name=f"{service}-{week}") as mrun:
        mlflow.log_params({"service": service, "week": week, "reference_months": ",".join(ref_months),
                           "model_version": mv.version, "current_rows": n_current})  # fmt: skip
        mlflow.log_metrics({_metric_name(r): r["value"] for r in records if not math.isnan(r["value"])})
        mlflow.set_tags({"verdict": summary["verdict"], "retrain": str(summary["retrain"])})
        mlflow.log_artifact(str(report_path), "report")
    summary["mlflow_run_id"] = mrun.info.run_id
    current.unpersist()
    reference.unpersist()
    log.info(
        "done",
        verdict=summary["verdict"],
        retrain=summary["retrain"],
        drifted=",".join(sorted(drifted)) or "none",
        rmse=round(perf.get("rmse", float("nan")), 3),
        report=report_path,
        duration_s=round(log.elapsed(), 1),
    )
    if fail_on_retrain and summary["retrain"]:
        summary["exit_code"] = 10
    return summary


def _metric_name(record: dict[str, Any]) -> str:
    if record["feature"].startswith("_"):  # accuracy records: "rmse", "reference_rmse", "rmse_pu_borough_Queens"
        return record["metric"]
    return f"{record['metric']}_{record['feature']}"


def _threshold(metric: str, settings: Settings) -> float | None:
    m = settings.monitor
    return {"psi": m.psi_threshold, "js_distance": m.js_threshold, "rmse": m.rmse_threshold}.get(metric)
