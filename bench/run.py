"""Benchmarks: cost of every stage at scale, as ratios against bare baselines measured in the same run.

    python bench/run.py --quick        # 0.25M rows (< 5 minutes on 2 cores)
    python bench/run.py                # 0.25M, 1M and 3M rows

Synthetic yellow months come from `taxi synth` (a smoothed bootstrap of the real shipped months). Everything runs
in one local Spark session with the project's own job code, in a throwaway lakehouse under
<lakehouse>/bench-work; results go to <lakehouse>/reports/bench/bench-<timestamp>.{json,md} and stdout.
No wall-clock number is asserted anywhere: the JSON's ratio keys are what scripts compare.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.measures import (  # noqa: E402  (after the path: run as a script)
    QUICK_ROUNDS,
    TRAIN_MONTH,
    bench_month,
    bench_settings,
    comparison_month,
    plain_filter_seconds,
    run_pipeline,
    scoring_vs_bare,
    timed,
    training_vs_single,
    tuning_parallel_vs_distributed,
)
from jobs.platform import storage  # noqa: E402  (light: no Spark, no MLflow)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="0.25M rows only")
    parser.add_argument("--sizes", help="comma-separated row counts (default: 250000,1000000,3000000)")
    args = parser.parse_args(argv)
    sizes = [250_000] if args.quick else [int(s) for s in (args.sizes or "250000,1000000,3000000").split(",")]

    from jobs.platform.config import load_settings
    from jobs.platform.log import setup_logging
    from jobs.platform.spark import get_spark

    setup_logging("WARNING")
    base = load_settings()
    work = base.lakehouse / "bench-work"
    storage.remove_tree(work)
    # The synthetic input files are sources, which ingest lands from local disk (also for an object-store lakehouse).
    inputs = Path(tempfile.mkdtemp(prefix="taxi-bench-inputs-"))
    # The full run scores and trains with the production model settings of conf/ (what the ratios are about);
    # --quick caps the boosting rounds so that it stays a few minutes' smoke run.
    settings = bench_settings(work, QUICK_ROUNDS if args.quick else None)
    spark = get_spark(settings, app_name="taxi-bench")
    started = time.perf_counter()
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "started_at": dt.datetime.now().isoformat(timespec="seconds"),
        "rounds": {
            "xgboost": settings.train.xgboost["n_estimators"],
            "lightgbm": settings.train.lightgbm["numIterations"],
        },
        "sizes": {},
    }
    print(f"benchmarks: sizes {sizes}, {os.cpu_count()} CPUs, work dir {work}", flush=True)
    measure_sizes(spark, settings, inputs, sizes, result)
    result["training"] = training_vs_single(spark, settings, comparison_month(sizes))
    # A search needs two training months before the validation month: three months, so not with --quick.
    result["tuning"] = (
        tuning_parallel_vs_distributed(spark, settings, "yellow", bench_month(len(sizes) - 1), len(sizes) + 1)
        if len(sizes) >= 2
        else {}
    )
    result.update(headline_ratios(result, sizes), total_seconds=round(time.perf_counter() - started, 1))
    spark.stop()
    shutil.rmtree(inputs, ignore_errors=True)
    write_results(base, result)
    return 0


def synth_month(settings, inputs: Path, month: str, rows: int) -> str:
    from jobs.ingest import synth

    out = inputs / f"yellow_tripdata_{month}.parquet"
    _, s, _ = timed(synth.run, settings, "yellow", month, rows, str(out), 7)
    print(f"  synth {month}: {rows} rows in {s:.1f}s", flush=True)
    return str(out)


def measure_sizes(spark, settings, inputs: Path, sizes: list[int], result: dict) -> None:
    """The training month and a champion, then each size's month through the pipeline, scoring against bare
    prediction and validation against a plain filter; into ``result["sizes"]``."""
    from jobs.training import job as train

    run_pipeline(spark, settings, TRAIN_MONTH, synth_month(settings, inputs, TRAIN_MONTH, 250_000))
    for rows in sizes:
        month = bench_month(sizes.index(rows))
        stages = run_pipeline(spark, settings, month, synth_month(settings, inputs, month, rows))
        if "champion_version" not in result:
            trained, s, mem = timed(train.run, spark, settings, "yellow", bench_month(0), 2)
            result["train_job"] = {
                "seconds": round(s, 2),
                "peak_mib": mem,
                "best": trained["best_candidate"],
                "best_rmse": trained["best_rmse"],
            }
            result["champion_version"] = trained["champion_version"]
        scoring = scoring_vs_bare(spark, settings, month)
        stages["score"] = {"seconds": scoring["score_job_seconds"], "peak_mib": scoring["score_job_peak_mib"]}
        filter_s = plain_filter_seconds(spark, settings, month)
        total = sum(v["seconds"] for v in stages.values())
        for v in stages.values():
            v["rows_per_s"] = round(rows / v["seconds"])
        result["sizes"][str(rows)] = {
            "stages": stages,
            "pipeline_seconds": round(total, 2),
            "validate_features_score_seconds": round(total - stages["ingest"]["seconds"], 2),
            "scoring": scoring,
            "plain_filter_seconds": round(filter_s, 2),
            "validation_vs_plain_filter_ratio": round(stages["validate"]["seconds"] / filter_s, 2),
            "validation_share_of_pipeline": round(stages["validate"]["seconds"] / total, 3),
        }
        print(f"  {rows} rows: " + ", ".join(f"{k} {v['seconds']}s" for k, v in stages.items()), flush=True)


def headline_ratios(result: dict, sizes: list[int]) -> dict:
    """The JSON's top-level ratios (what scripts compare), from the largest size's measurements."""
    t, tuned = result["training"], result["tuning"]
    last = result["sizes"][str(sizes[-1])]
    bare = last["scoring"]["bare_predict_rows_per_s"]
    have_4x = {"250000", "1000000"} <= set(result["sizes"])
    return {
        "scoring_vs_bare_predict_ratio": round(last["scoring"]["score_job_rows_per_s"] / bare, 3),
        "spark_predict_vs_bare_predict_ratio": round(last["scoring"]["spark_predict_rows_per_s"] / bare, 3),
        "train_xgb_spark_vs_single_ratio": round(t["xgb_spark_seconds"] / t["xgb_single_seconds"], 2),
        "train_lgbm_spark_vs_single_ratio": round(t["lgbm_spark_seconds"] / t["lgbm_single_seconds"], 2),
        "tuning_xgb_parallel_2_vs_1_time_ratio": tuned.get("xgboost_parallel_2_vs_1_time_ratio"),
        "tuning_lgbm_parallel_2_vs_1_time_ratio": tuned.get("lightgbm_parallel_2_vs_1_time_ratio"),
        "validation_share_of_pipeline": last["validation_share_of_pipeline"],
        "validation_vs_plain_filter_ratio": last["validation_vs_plain_filter_ratio"],
        "rows_4x_time_ratio": (
            round(result["sizes"]["1000000"]["pipeline_seconds"] / result["sizes"]["250000"]["pipeline_seconds"], 2)
            if have_4x
            else None
        ),
    }


def write_results(base, result: dict) -> None:
    out_dir = base.reports_dir / "bench"
    storage.makedirs(out_dir)
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    (out_dir / f"bench-{stamp}.json").write_text(json.dumps(result, indent=1))
    md = markdown(result)
    (out_dir / f"bench-{stamp}.md").write_text(md)
    print(md)
    print(f"written: {out_dir}/bench-{stamp}.json")


def markdown(r: dict) -> str:
    lines = [
        f"## Benchmarks ({r['machine']['cpus']} CPUs, {r['machine']['platform']}, {r['started_at']})",
        "",
        "| rows | stage | seconds | rows/s | peak MiB |",
        "|---:|---|---:|---:|---:|",
    ]
    for rows, s in r["sizes"].items():
        for name, v in s["stages"].items():
            lines.append(f"| {int(rows):,} | {name} | {v['seconds']} | {v['rows_per_s']:,} | {v['peak_mib']} |")
        lines.append(f"| {int(rows):,} | **pipeline** | {s['pipeline_seconds']} | | |")
        lines.append(f"| {int(rows):,} | validate + features + score | {s['validate_features_score_seconds']} | | |")
    lines += [
        "",
        "| rows | score job s | Spark predict pass s | bare predict s | score job ÷ bare (rows/s) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for rows, s in r["sizes"].items():
        sc = s["scoring"]
        lines.append(
            f"| {int(rows):,} | {sc['score_job_seconds']} | {sc['spark_predict_seconds']} | "
            f"{sc['bare_predict_seconds']} | {sc.get('score_job_vs_bare_ratio')} |"
        )
    t = r["training"]
    lines += [
        "",
        "| measure | value | target |",
        "|---|---:|---|",
        f"| scoring job rows/s ÷ bare inplace_predict rows/s | {r['scoring_vs_bare_predict_ratio']} | ≥ 0.5 |",
        f"| Spark predict pass rows/s ÷ bare | {r['spark_predict_vs_bare_predict_ratio']} | |",
        f"| XGBoost on Spark ÷ single-process time ({t['rows']:,} rows, {r['rounds']['xgboost']} rounds) | "
        f"{r['train_xgb_spark_vs_single_ratio']} | ≤ 1.5 |",
        f"| LightGBM on SynapseML ÷ single-process time ({r['rounds']['lightgbm']} rounds) | "
        f"{r['train_lgbm_spark_vs_single_ratio']} | ≤ 1.5 |",
        f"| validation share of the pipeline | {r['validation_share_of_pipeline']} | ≤ 0.25 |",
        f"| GX validation ÷ plain Spark filter (same rules) | {r['validation_vs_plain_filter_ratio']} | |",
        f"| pipeline time at 4× rows (1M ÷ 0.25M) | {r['rows_4x_time_ratio']} | ≤ 4.4 |",
        f"| --tune XGBoost: 2 single-slot trials at once ÷ one 2-slot trial at a time | "
        f"{r['tuning_xgb_parallel_2_vs_1_time_ratio']} | < 1: parallel_trials 2 |",
        f"| --tune LightGBM: same | {r['tuning_lgbm_parallel_2_vs_1_time_ratio']} | < 1: parallel_trials 2 |",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
