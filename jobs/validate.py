"""Validate: Great Expectations suites on Spark decide which rows go on and whether a month is accepted.

Two levels, each a versioned GX suite under ``expectations/``:
- file rules (``<service>_file.json``) run on the landed raw file: columns present, column types, row count
  against the previous month. One failure rejects the whole month.
- row rules (``<service>_rows.json``) run on the month's bronze rows. A failing row goes to
  ``quarantine/trips`` with the rules it broke; if more than ``validation.max_failed_share`` of the rows fail,
  the whole month is rejected.

The suite files are the single source of truth. GX computes each rule's failing-row count (and the Data Docs);
to route individual rows, each row expectation is compiled into the equivalent Spark predicate, and the job
checks that every compiled rule counts exactly the rows GX counted.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import ingest, lakehouse
from .config import PROJECT_ROOT, Settings
from .errors import MissingUpstream, MonthRejected
from .log import JobLog, spark_progress
from .months import add_months, check_month, check_service
from .reports.offline import make_offline

SUITES_DIR = PROJECT_ROOT / "expectations"


@dataclass
class Suite:
    name: str
    version: str
    expectations: list[dict[str, Any]]

    @classmethod
    def load(cls, service: str, level: str, suites_dir: Path = SUITES_DIR) -> Suite:
        data = json.loads((suites_dir / f"{service}_{level}.json").read_text())
        return cls(data["name"], data["meta"]["version"], data["expectations"])

    def rules(self) -> list[str]:
        return [e["meta"]["rule"] for e in self.expectations]


@dataclass
class RuleOutcome:
    rule: str
    success: bool
    unexpected_count: int | None
    reason: str
    observed: Any = None


@dataclass
class SuiteOutcome:
    suite: Suite
    rules: list[RuleOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[RuleOutcome]:
        return [r for r in self.rules if not r.success]


# ---------------------------------------------------------------------------------------------------------------
# Pure transforms
# ---------------------------------------------------------------------------------------------------------------
def add_rule_columns(bronze):
    """Derived columns the row rules check: duration, pickup month, unparsable columns."""
    from pyspark.sql import functions as F

    return (
        bronze.withColumn(
            "duration_min",
            (F.unix_timestamp("dropoff_datetime") - F.unix_timestamp("pickup_datetime")) / F.lit(60.0),
        )
        .withColumn("pickup_month", F.date_format("pickup_datetime", "yyyy-MM"))
        .withColumn("cast_error_columns", F.nullif(F.concat_ws(",", "cast_errors"), F.lit("")))
    )


def _param(value: Any, params: dict[str, Any]) -> Any:
    return params[value["$PARAMETER"]] if isinstance(value, dict) and "$PARAMETER" in value else value


def failure_condition(expectation: dict[str, Any], params: dict[str, Any]):
    """The Spark predicate that is true exactly for the rows GX counts as unexpected for this expectation."""
    from pyspark.sql import functions as F

    kw = {k: _param(v, params) for k, v in expectation["kwargs"].items()}
    kind = expectation["type"]
    if kind == "expect_column_values_to_not_be_null":
        return F.col(kw["column"]).isNull()
    if kind == "expect_column_values_to_be_null":
        return F.col(kw["column"]).isNotNull()
    if kind == "expect_column_values_to_be_in_set":
        c = F.col(kw["column"])
        return c.isNotNull() & ~c.isin(list(kw["value_set"]))
    if kind == "expect_column_values_to_be_between":
        c = F.col(kw["column"])
        ok = F.lit(True)
        if kw.get("min_value") is not None:
            ok = ok & (c > kw["min_value"] if kw.get("strict_min") else c >= kw["min_value"])
        if kw.get("max_value") is not None:
            ok = ok & (c < kw["max_value"] if kw.get("strict_max") else c <= kw["max_value"])
        return c.isNotNull() & ~ok
    if kind == "expect_column_pair_values_a_to_be_greater_than_b":
        a, b = F.col(kw["column_A"]), F.col(kw["column_B"])
        if kw.get("ignore_row_if", "both_values_are_missing") != "either_value_is_missing":
            raise ValueError("row rules on column pairs must set ignore_row_if: either_value_is_missing")
        return a.isNotNull() & b.isNotNull() & ~(a >= b if kw.get("or_equal") else a > b)
    raise ValueError(f"row rule type {kind} has no Spark predicate: add one to validate.failure_condition")


def flag_failures(df, suite: Suite, params: dict[str, Any]):
    """Add ``failed_rules``: the names of the row rules each row breaks (empty array: the row is valid)."""
    from pyspark.sql import functions as F

    flags = [F.when(failure_condition(e, params), F.lit(e["meta"]["rule"])) for e in suite.expectations]
    return df.withColumn("failed_rules", F.array_compact(F.array(*flags)))


def row_params(settings: Settings, month: str) -> dict[str, Any]:
    v = settings.validation
    return {
        "months": [month],
        "max_duration_min": v.max_duration_hours * 60,
        "max_trip_distance_miles": v.max_trip_distance_miles,
        "max_passenger_count": v.max_passenger_count,
        "min_fare_amount": v.min_fare_amount,
        "max_fare_amount": v.max_fare_amount,
    }


def raw_with_canonical_names(raw):
    """The landed file's columns under canonical names, types untouched (what the file rules inspect)."""
    from .schema import canonical_name

    seen: set[str] = set()
    cols = []
    for c in raw.columns:
        name = canonical_name(c) or c
        if name not in seen:
            seen.add(name)
            cols.append(raw[f"`{c}`"].alias(name))
    return raw.select(*cols)


# ---------------------------------------------------------------------------------------------------------------
# Great Expectations
# ---------------------------------------------------------------------------------------------------------------
class GxRunner:
    """A file-backed GX context in the lakehouse's reports folder: suites, results history and Data Docs."""

    def __init__(self, settings: Settings):
        import great_expectations as gx

        self.settings = settings
        self.root = settings.reports_dir / "validation"
        self.root.mkdir(parents=True, exist_ok=True)
        self.gx = gx
        self.context = gx.get_context(mode="file", project_root_dir=str(self.root))
        bars = self.context.variables.progress_bars
        if (bars.get("globally") if isinstance(bars, dict) else getattr(bars, "globally", None)) is not False:
            from great_expectations.data_context.types.base import ProgressBarsConfig

            # Batch jobs log their own progress; GX's terminal bars only clutter the logs.
            self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
            self.context.variables.save()
        self.datasource = self.context.data_sources.add_or_update_spark(name="spark")

    @property
    def docs_index(self) -> Path:
        return self.root / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"

    def _batch_definition(self, asset_name: str):
        assets = {a.name: a for a in self.datasource.assets}
        asset = assets.get(asset_name) or self.datasource.add_dataframe_asset(name=asset_name)
        defs = {b.name: b for b in asset.batch_definitions}
        return defs.get("whole_month") or asset.add_batch_definition_whole_dataframe("whole_month")

    def run(self, suite: Suite, df, params: dict[str, Any], run_name: str, skip_types: tuple[str, ...] = ()):
        from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

        gx = self.gx
        # A column-level rule on a column the file lacks cannot run: `columns_present` reports that column.
        expectations = [
            e
            for e in suite.expectations
            if e["type"] not in skip_types and e["kwargs"].get("column", df.columns[0]) in df.columns
        ]
        gx_suite = gx.ExpectationSuite(
            name=suite.name,
            expectations=[
                ExpectationConfiguration(type=e["type"], kwargs=e["kwargs"], meta=e["meta"]).to_domain_obj()
                for e in expectations
            ],
            meta={"version": suite.version},
        )
        gx_suite = self.context.suites.add_or_update(gx_suite)
        vd = self.context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=suite.name, data=self._batch_definition(suite.name), suite=gx_suite)
        )
        checkpoint = self.context.checkpoints.add_or_update(
            gx.Checkpoint(
                name=suite.name,
                validation_definitions=[vd],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
                result_format={
                    "result_format": self.settings.validation.result_format,
                    "partial_unexpected_count": self.settings.validation.partial_unexpected_count,
                },
            )
        )
        result = checkpoint.run(
            batch_parameters={"dataframe": df},
            expectation_parameters=params,
            run_id=gx.RunIdentifier(run_name=run_name),
        )
        make_offline(self.docs_index.parent)  # GX just rebuilt pages that load from CDNs
        outcome = SuiteOutcome(suite)
        by_rule = {e["meta"]["rule"]: e for e in expectations}
        for vr in result.run_results.values():
            for r in vr.results:
                rule = r.expectation_config.meta["rule"]
                exc = r.exception_info or {}
                if exc.get("raised_exception"):
                    raise RuntimeError(f"GX could not evaluate rule {rule}: {exc.get('exception_message')}")
                outcome.rules.append(
                    RuleOutcome(
                        rule,
                        bool(r.success),
                        r.result.get("unexpected_count"),
                        by_rule[rule]["meta"]["reason"],
                        r.result.get("observed_value"),
                    )
                )
        return outcome


# ---------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------
def previous_month_rows(spark, settings: Settings, service: str, month: str) -> int | None:
    """Raw row count of the last accepted run of the previous month, if there is one."""
    if not lakehouse.exists(settings, lakehouse.VALIDATION_RUNS):
        return None
    prev = (
        lakehouse.read(spark, settings, lakehouse.VALIDATION_RUNS)
        .where(lakehouse.partition_predicate(service))
        .where(f"month = '{add_months(month, -1)}' AND verdict = 'passed'")
        .orderBy("started_at", ascending=False)
        .select("rows_total")
        .first()
    )
    return int(prev.rows_total) if prev else None


def _runs_row(spark, record: dict[str, Any]):
    from pyspark.sql import types as T

    schema = T.StructType(
        [
            T.StructField("run_id", T.StringType()),
            T.StructField("service", T.StringType()),
            T.StructField("month", T.StringType()),
            T.StructField("started_at", T.TimestampType()),
            T.StructField("duration_s", T.DoubleType()),
            T.StructField("verdict", T.StringType()),
            T.StructField("reason", T.StringType()),
            T.StructField("rows_total", T.LongType()),
            T.StructField("rows_valid", T.LongType()),
            T.StructField("rows_quarantined", T.LongType()),
            T.StructField("failed_share", T.DoubleType()),
            T.StructField("rule_failures", T.MapType(T.StringType(), T.LongType())),
            T.StructField("file_rules_failed", T.ArrayType(T.StringType())),
            T.StructField("suite_versions", T.MapType(T.StringType(), T.StringType())),
            T.StructField("bronze_version", T.LongType()),
            T.StructField("data_docs", T.StringType()),
        ]
    )
    return spark.createDataFrame([tuple(record[f.name] for f in schema.fields)], schema)


def run(spark, settings: Settings, service: str, month: str) -> dict[str, Any]:
    check_service(service)
    check_month(month)
    log = JobLog("validate", service, month)
    started = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    run_id = lakehouse.new_run_id("validate")
    landed = ingest.landed_file(settings, service, month)
    if landed is None:
        raise MissingUpstream(f"no landed raw file for {service} {month}: run `taxi ingest` for it first")
    bronze_version = lakehouse.current_version(spark, settings, lakehouse.BRONZE)
    bronze = lakehouse.read_partition(spark, settings, lakehouse.BRONZE, service, month)
    file_suite, row_suite = Suite.load(service, "file"), Suite.load(service, "rows")
    gx_runner = GxRunner(settings)
    run_name = f"{service}-{month}-{run_id}"

    with spark_progress(spark, log):
        # File rules on the landed file as it is (CSV releases carry no types: their parsing is a row rule).
        raw = raw_with_canonical_names(ingest.read_raw(spark, landed))
        prev = previous_month_rows(spark, settings, service, month)
        v = settings.validation
        file_params = {
            "min_rows": int(prev * v.min_rows_vs_previous) if prev else 1,
            "max_rows": int(prev * v.max_rows_vs_previous) if prev else None,
        }
        skip = ("expect_column_values_to_be_in_type_list",) if landed.fmt == "csv" else ()
        file_outcome = gx_runner.run(file_suite, raw, file_params, run_name, skip_types=skip)
        log.info("file rules", passed=not file_outcome.failed, failed=[r.rule for r in file_outcome.failed])

        checked = flag_failures(add_rule_columns(bronze), row_suite, row_params(settings, month)).cache()
        try:
            row_outcome = gx_runner.run(row_suite, checked, row_params(settings, month), run_name)
            counts = _rule_counts(checked, row_suite)
            for r in row_outcome.rules:
                if r.unexpected_count is not None and r.unexpected_count != counts[r.rule]:
                    raise RuntimeError(
                        f"rule {r.rule}: GX counted {r.unexpected_count} failing rows, the quarantine predicate "
                        f"{counts[r.rule]}: fix validate.failure_condition"
                    )
            total = counts.pop("_total")
            failing = counts.pop("_failing")
            failed_share = failing / total if total else 0.0

            reasons = [f"{r.rule}: {r.reason} (observed {r.observed})" for r in file_outcome.failed]
            if failed_share > v.max_failed_share:
                worst = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
                reasons.append(
                    f"{failed_share:.1%} of rows fail the row rules (limit {v.max_failed_share:.0%}); most: "
                    + ", ".join(f"{k}={n}" for k, n in worst)
                )
            verdict = "rejected" if reasons else "passed"
            record = {
                "run_id": run_id,
                "service": service,
                "month": month,
                "started_at": started,
                "duration_s": round(log.elapsed(), 2),
                "verdict": verdict,
                "reason": "; ".join(reasons) or None,
                "rows_total": total,
                "rows_valid": total - failing if verdict == "passed" else 0,
                "rows_quarantined": failing if verdict == "passed" else 0,
                "failed_share": round(failed_share, 6),
                "rule_failures": counts,
                "file_rules_failed": [r.rule for r in file_outcome.failed],
                "suite_versions": {file_suite.name: file_suite.version, row_suite.name: row_suite.version},
                "bronze_version": bronze_version,
                "data_docs": str(gx_runner.docs_index),
            }
            if verdict == "passed":
                _write_outputs(checked, row_suite, settings, run_id, service, month)
        finally:
            checked.unpersist()
    lakehouse.append(_runs_row(spark, record), settings, lakehouse.VALIDATION_RUNS, run_id)
    log.info(
        "done",
        verdict=verdict,
        rows=total,
        valid=record["rows_valid"],
        quarantined=record["rows_quarantined"],
        failed_share=round(failed_share, 4),
        data_docs=gx_runner.docs_index,
        duration_s=round(log.elapsed(), 1),
    )
    if verdict == "rejected":
        raise MonthRejected(f"{service} {month} rejected: {record['reason']}")
    keys = ("verdict", "rows_total", "rows_valid", "rows_quarantined", "failed_share", "data_docs", "run_id")
    return {k: record[k] for k in keys}


def _rule_counts(checked, suite: Suite) -> dict[str, int]:
    """Failing rows per rule, plus ``_total`` rows and ``_failing`` rows (failing any rule), in one pass."""
    from pyspark.sql import functions as F

    aggs = [F.sum(F.array_contains("failed_rules", r).cast("long")).alias(r) for r in suite.rules()]
    aggs += [F.count(F.lit(1)).alias("_total"), F.sum((F.size("failed_rules") > 0).cast("long")).alias("_failing")]
    row = checked.agg(*aggs).first().asDict()
    return {k: int(v or 0) for k, v in row.items()}


def _write_outputs(checked, suite: Suite, settings: Settings, run_id: str, service: str, month: str) -> None:
    """Valid rows to silver/trips, failing rows to quarantine/trips: each one atomic partition replace."""
    from pyspark.sql import functions as F

    from .schema import BRONZE_COLUMNS

    base = [n for n, _ in BRONZE_COLUMNS]
    valid = checked.where(F.size("failed_rules") == 0).select(*base).withColumn("validation_run_id", F.lit(run_id))
    reason_of = F.create_map(*[F.lit(x) for e in suite.expectations for x in (e["meta"]["rule"], e["meta"]["reason"])])
    quarantined = checked.where(F.size("failed_rules") > 0).select(
        *base,
        "failed_rules",
        F.transform("failed_rules", lambda r: reason_of[r]).alias("failed_reasons"),
        F.lit(run_id).alias("validation_run_id"),
        F.current_timestamp().alias("quarantined_at"),
    )
    lakehouse.replace_partition(quarantined, settings, lakehouse.QUARANTINE, run_id, service, month)
    lakehouse.replace_partition(valid, settings, lakehouse.TRIPS, run_id, service, month)
