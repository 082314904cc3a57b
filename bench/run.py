"""Benchmarks: cost of every stage at scale, as ratios against bare baselines measured in the same run.

    python bench/run.py --quick        # 0.25M rows (< 5 minutes on 2 cores)
    python bench/run.py                # 0.25M, 1M and 3M rows (make bench)
    python bench/run.py --tune         # `train --tune`: two 1-slot trials at once vs one 2-slot trial at a time

Synthetic yellow months come from `taxi synth` (a smoothed bootstrap of the real shipped months). Everything runs
in one local Spark session with the project's own job code, in a throwaway lakehouse under
<lakehouse>/bench-work; results go to <lakehouse>/reports/bench/<bench|bench-tune>-<timestamp>.{json,md} and
stdout. No wall-clock number is asserted anywhere: the JSON's ratio keys are what scripts compare. The tests run
this script on tiny months (``--sizes 20000,80000 --train-rows 20000 --rounds 20``), so a moved function fails there.
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
    monitoring_cost,
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

DEFAULT_SIZES = "250000,1000000,3000000"


def parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="0.25M rows only, 100 boosting rounds")
    parser.add_argument("--sizes", help=f"comma-separated rows of the benchmark months (default {DEFAULT_SIZES})")
    parser.add_argument("--train-rows", type=int, default=250_000, help="rows of the first champion's month")
    parser.add_argument("--rounds", type=int, help="boosting rounds of every model (default: conf's settings)")
    parser.add_argument(
        "--tune", action="store_true", help="only the tuning comparison, on three months of the first size's rows"
    )
    parser.add_argument("--trials", type=int, default=4, help="trials per tuning layout (with --tune)")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in (args.sizes or ("250000" if args.quick or args.tune else DEFAULT_SIZES)).split(",")]
    if args.quick and not args.rounds:
        args.rounds = QUICK_ROUNDS
    return args


def main(argv=None) -> int:
    args = parse(argv)
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
    settings = bench_settings(work, args.rounds)
    spark = get_spark(settings, app_name="taxi-bench")
    started = time.perf_counter()
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "started_at": dt.datetime.now().isoformat(timespec="seconds"),
        "rounds": {
            "xgboost": settings.train.xgboost["n_estimators"],
            "lightgbm": settings.train.lightgbm["numIterations"],
        },
    }
    print(f"benchmarks: sizes {args.sizes}, {os.cpu_count()} CPUs, work dir {work}", flush=True)
    if args.tune:
        result["tuning"] = measure_tuning(spark, settings, inputs, args.sizes[0], args.train_rows, args.trials)
        result.update(tuning_ratios(result["tuning"]))
    else:
        result["sizes"] = measure_sizes(spark, settings, inputs, args.sizes, args.train_rows, result)
        result["monitoring"] = monitoring_cost(spark, settings, bench_month(len(args.sizes) - 1))
        result["training"] = training_vs_single(spark, settings, comparison_month(args.sizes, args.train_rows))
        result.update(headline_ratios(result, args.sizes))
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    spark.stop()
    shutil.rmtree(inputs, ignore_errors=True)
    write_results(base, result, "bench-tune" if args.tune else "bench")
    return 0


def synth_month(settings, inputs: Path, month: str, rows: int) -> str:
    from jobs.ingest import synth

    out = inputs / f"yellow_tripdata_{month}.parquet"
    _, s, _ = timed(synth.run, settings, "yellow", month, rows, str(out), 7)
    print(f"  synth {month}: {rows} rows in {s:.1f}s", flush=True)
    return str(out)


def measure_sizes(spark, settings, inputs: Path, sizes: list[int], train_rows: int, result: dict) -> dict:
    """The training month and a champion (its training into ``result["train_job"]``), then each size's month through
    the pipeline, scoring against bare prediction and validation against a plain filter: per size."""
    from jobs.training import job as train

    measured = {}
    run_pipeline(spark, settings, TRAIN_MONTH, synth_month(settings, inputs, TRAIN_MONTH, train_rows))
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
        measured[str(rows)] = {
            "stages": stages,
            "pipeline_seconds": round(total, 2),
            "validate_features_score_seconds": round(total - stages["ingest"]["seconds"], 2),
            "scoring": scoring,
            "plain_filter_seconds": round(filter_s, 2),
            "validation_vs_plain_filter_ratio": round(stages["validate"]["seconds"] / filter_s, 2),
            "validation_share_of_pipeline": round(stages["validate"]["seconds"] / total, 3),
        }
        print(f"  {rows} rows: " + ", ".join(f"{k} {v['seconds']}s" for k, v in stages.items()), flush=True)
    return measured


def measure_tuning(spark, settings, inputs: Path, rows: int, train_rows: int, trials: int) -> dict:
    """Three months (two to train on, the last to validate) through the pipeline, then both tuning layouts."""
    months = [(TRAIN_MONTH, train_rows), (bench_month(0), rows), (bench_month(1), rows)]
    for month, n in months:
        run_pipeline(spark, settings, month, synth_month(settings, inputs, month, n))
    return tuning_parallel_vs_distributed(spark, settings, "yellow", bench_month(1), len(months), trials)


def tuning_ratios(tuned: dict) -> dict:
    return {
        "tuning_xgb_parallel_2_vs_1_time_ratio": tuned["xgboost_parallel_2_vs_1_time_ratio"],
        "tuning_lgbm_parallel_2_vs_1_time_ratio": tuned["lightgbm_parallel_2_vs_1_time_ratio"],
    }


def headline_ratios(result: dict, sizes: list[int]) -> dict:
    """The JSON's top-level ratios (what scripts compare), from the largest size's measurements."""
    t = result["training"]
    last = result["sizes"][str(sizes[-1])]
    bare = last["scoring"]["bare_predict_rows_per_s"]
    quadrupled = next(((a, b) for a in sizes for b in sizes if b == 4 * a), None)
    return {
        "scoring_vs_bare_predict_ratio": round(last["scoring"]["score_job_rows_per_s"] / bare, 3),
        "spark_predict_vs_bare_predict_ratio": round(last["scoring"]["spark_predict_rows_per_s"] / bare, 3),
        "compiled_vs_bare_predict_ratio": round(last["scoring"]["compiled_predict_rows_per_s"] / bare, 3),
        "train_xgb_spark_vs_single_ratio": round(t["xgb_spark_seconds"] / t["xgb_single_seconds"], 2),
        "train_lgbm_spark_vs_single_ratio": round(t["lgbm_spark_seconds"] / t["lgbm_single_seconds"], 2),
        "validation_share_of_pipeline": last["validation_share_of_pipeline"],
        "validation_vs_plain_filter_ratio": last["validation_vs_plain_filter_ratio"],
        "metric_tables_vs_monitor_ratio": result["monitoring"]["metric_tables_vs_monitor_ratio"],
        # pipeline time at 4x the rows, from the first pair of sizes where one is four times the other
        "rows_4x_time_ratio": (
            round(
                result["sizes"][str(quadrupled[1])]["pipeline_seconds"]
                / result["sizes"][str(quadrupled[0])]["pipeline_seconds"],
                2,
            )
            if quadrupled
            else None
        ),
    }


def write_results(base, result: dict, name: str) -> None:
    out_dir = base.reports_dir / "bench"
    storage.makedirs(out_dir)
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    (out_dir / f"{name}-{stamp}.json").write_text(json.dumps(result, indent=1))
    md = markdown(result)
    (out_dir / f"{name}-{stamp}.md").write_text(md)
    print(md)
    print(f"written: {out_dir}/{name}-{stamp}.json")


def markdown(r: dict) -> str:
    lines = [f"## Benchmarks ({r['machine']['cpus']} CPUs, {r['machine']['platform']}, {r['started_at']})", ""]
    if "tuning" in r:
        return "\n".join(lines + tuning_markdown(r)) + "\n"
    lines += ["| rows | stage | seconds | rows/s | peak MiB |", "|---:|---|---:|---:|---:|"]
    for rows, s in r["sizes"].items():
        for name, v in s["stages"].items():
            lines.append(f"| {int(rows):,} | {name} | {v['seconds']} | {v['rows_per_s']:,} | {v['peak_mib']} |")
        lines.append(f"| {int(rows):,} | **pipeline** | {s['pipeline_seconds']} | | |")
        lines.append(f"| {int(rows):,} | validate + features + score | {s['validate_features_score_seconds']} | | |")
    lines += [
        "",
        "| rows | models | score job s | Spark predict pass s | bare predict s | score job ÷ bare (rows/s) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for rows, s in r["sizes"].items():
        sc = s["scoring"]
        lines.append(
            f"| {int(rows):,} | {' + '.join(sc['models'])} | {sc['score_job_seconds']} | {sc['spark_predict_seconds']} "
            f"| {sc['bare_predict_seconds']} | {sc['score_job_rows_per_s'] / sc['bare_predict_rows_per_s']:.3f} |"
        )
    t = r["training"]
    lines += [
        "",
        "| measure | value | target |",
        "|---|---:|---|",
        f"| scoring job rows/s ÷ bare predict of the same models | {r['scoring_vs_bare_predict_ratio']} | ≥ 0.9 |",
        f"| Spark predict pass rows/s ÷ bare | {r['spark_predict_vs_bare_predict_ratio']} | |",
        f"| compiled LightGBM trees ÷ bare predict of the same models (rows/s) | {r['compiled_vs_bare_predict_ratio']} "
        "| ≥ 2.0 |",
        f"| XGBoost on Spark ÷ single-process time ({t['rows']:,} rows, {r['rounds']['xgboost']} rounds) | "
        f"{r['train_xgb_spark_vs_single_ratio']} | ≤ 1.25 |",
        f"| LightGBM on SynapseML ÷ single-process time ({r['rounds']['lightgbm']} rounds) | "
        f"{r['train_lgbm_spark_vs_single_ratio']} | ≤ 1.25 |",
        f"| validation share of the pipeline | {r['validation_share_of_pipeline']} | |",
        f"| GX validation ÷ plain Spark filter (same rules) | {r['validation_vs_plain_filter_ratio']} | ≤ 4 |",
        f"| pipeline time at 4× rows | {r['rows_4x_time_ratio']} | ≤ 2.5 |",
        f"| metric tables ÷ the rest of the monitor runs, a month's {len(r['monitoring']['weeks'])} weeks "
        f"(first week, which also writes the month's rows: {r['monitoring']['first_week_ratio']}) | "
        f"{r['metric_tables_vs_monitor_ratio']} | ≤ 1.5 |",
    ]
    return "\n".join(lines) + "\n"


def tuning_markdown(r: dict) -> list[str]:
    t = r["tuning"]
    return [
        f"`train --tune`, {t['trials']} trials per layout, trained on {', '.join(t['train_months'])}",
        "",
        "| learner | one 2-slot trial at a time s | two 1-slot trials at once s | ratio | overlapping trials |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {learner} | {t[f'{learner}_parallel_1']['seconds']} | {t[f'{learner}_parallel_2']['seconds']} | "
            f"{t[f'{learner}_parallel_2_vs_1_time_ratio']} | {t[f'{learner}_parallel_2']['overlapping_trials']} |"
            for learner in ("xgboost", "lightgbm")
        ),
        "",
        "A ratio below 1 favours `train.tune.parallel_trials: 2`.",
    ]


if __name__ == "__main__":
    sys.exit(main())
