"""``taxi``: one command-line entry point, a subcommand per job. Airflow and spark-submit run this same code.

Each stage registers its own subcommands (``jobs/<stage>/command.py``); a command parses its arguments, loads the
config, runs its job (with a Spark session where it needs one) and prints a one-line JSON summary on stdout. Errors a
user can act on print one line on stderr and exit non-zero (see :mod:`jobs.platform.errors`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from jobs.backtest import command as backtest_command
from jobs.entry import commands as entry_commands
from jobs.features import command as features_command
from jobs.ingest import command as ingest_command
from jobs.lineage import command as lineage_command
from jobs.monitoring import command as monitoring_command
from jobs.platform import commands as platform_commands
from jobs.platform.config import ConfigError, load_settings
from jobs.platform.errors import TaxiError
from jobs.platform.log import log_to_file, setup_logging
from jobs.promotion import command as promotion_command
from jobs.scoring import command as scoring_command
from jobs.training import command as training_command
from jobs.validation import command as validation_command

# In the order `taxi --help` lists them: the lifecycle first, then the tools around it.
COMMANDS = (
    ingest_command,
    validation_command,
    features_command,
    training_command,
    promotion_command,
    scoring_command,
    monitoring_command,
    lineage_command,
    backtest_command,
    entry_commands,
    platform_commands,
)
EXIT_DOC = """exit codes: 0 ok; 2 bad input, arguments or config; 3 month rejected by validation;
4 an upstream stage is missing; 5 a service (MLflow) unreachable;
10 monitor: drift or error over threshold (retrain); 1 anything else."""


def parser() -> argparse.ArgumentParser:
    """The ``taxi`` parser: global options, then every stage's subcommands."""
    top = argparse.ArgumentParser(
        prog="taxi",
        description="NYC taxi trip-duration pipeline: Spark jobs over a Delta lakehouse, tracked in MLflow.",
        epilog=EXIT_DOC + "\nconfig: conf/local.yaml; override with TAXI_CONF=file.yaml, TAXI_LAKEHOUSE, "
        "MLFLOW_TRACKING_URI and TAXI__SECTION__KEY=value.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--conf", help="YAML file merged over conf/local.yaml (default: $TAXI_CONF)")
    top.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="INFO: one line per step of a job; DEBUG: also the libraries' own messages",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(commands)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        settings = load_settings(conf_file=args.conf)
        log_to_file(settings.log.file)
        summary = args.func(settings, args)
    except ConfigError as e:
        print(f"taxi {args.command}: config error: {e}", file=sys.stderr)
        return ConfigError.exit_code
    except TaxiError as e:
        print(f"taxi {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception:
        logging.getLogger("taxi").exception("taxi %s failed", args.command)
        return 1
    if summary is not None:
        print(json.dumps({"command": args.command, **summary}, default=str))
    return int(summary.get("exit_code", 0)) if isinstance(summary, dict) else 0


if __name__ == "__main__":
    sys.exit(main())
