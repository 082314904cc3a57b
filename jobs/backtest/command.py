"""``taxi backtest``: replay real months through the live calendar and compare retraining policies."""

from __future__ import annotations

import argparse

from jobs.platform.arguments import add_service, month, with_spark
from jobs.platform.config import POLICIES


def policy_list(value: str) -> list[str]:
    names = [p.strip() for p in value.split(",") if p.strip()]
    wrong = [p for p in names if p not in POLICIES]
    if wrong or not names:
        raise argparse.ArgumentTypeError(
            f"unknown policy {', '.join(wrong) or '(none)'}: choose from {', '.join(POLICIES)}"
        )
    return list(dict.fromkeys(["monthly", *names]))  # monthly is the real run the others are compared with


def backtest(settings, args):
    from jobs.backtest import job

    def go(spark):
        return job.run(spark, settings, args.service, args.first, args.last, args.source_dir, args.policies)

    return with_spark(settings, args.command, go)


def register(commands) -> None:
    p = commands.add_parser(
        "backtest",
        help="replay months through the live calendar (land, score, monitor, retrain) and compare retraining policies",
        description="Replays --from..--to on the configured lakehouse through the jobs the DAGs run: history months "
        "the window needs are landed from --source-dir (files named as the TLC names them) and, with no champion "
        "yet, trained on first; then each month is landed, validated, featurised, scored with the champion of that "
        "moment, every week it completes is monitored, and a training until it runs (the gate decides). That is "
        "the monthly policy, the real run. frozen, drift and always are replayed from the same trainings and "
        "written only to <lakehouse>/reports/backtest/<service>/<from>_<to>.{html,json}, monitoring/backtest and "
        "an MLflow run. A month missing from the folder or rejected is reported and the loop goes on; a rerun "
        "changes nothing.",
    )
    add_service(p)
    p.add_argument("--from", dest="first", required=True, type=month, help="first replayed month, YYYY-MM")
    p.add_argument("--to", dest="last", required=True, type=month, help="last replayed month, YYYY-MM")
    p.add_argument(
        "--source-dir",
        default=None,
        help="folder of <service>_tripdata_YYYY-MM.parquet files (default: data.sample_dir/<service>); must lie "
        "under data.allowed_roots",
    )
    p.add_argument(
        "--policies",
        type=policy_list,
        default=None,
        help="comma-separated, from monthly, frozen, drift, always (default: backtest.policies; monthly always runs)",
    )
    p.set_defaults(func=backtest)
