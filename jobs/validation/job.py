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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.features import freshness
from jobs.ingest import job as ingest
from jobs.platform import lakehouse, sql
from jobs.platform.config import Settings
from jobs.platform.context import RunContext
from jobs.platform.errors import MissingUpstream, MonthRejected
from jobs.platform.log import spark_progress
from jobs.platform.months import add_months, check_month, elapsed_minutes
from jobs.validation import overview as validation_overview
from jobs.validation.gx import DOCS_INDEX, OVERVIEW, GxRunner, gx_project, published_root
from jobs.validation.suites import Suite


# ---------------------------------------------------------------------------------------------------------------
# Pure transforms
# ---------------------------------------------------------------------------------------------------------------
def add_rule_columns(bronze):
    """Derived columns the row rules check: duration, pickup month, unparsable columns."""
    from pyspark.sql import functions as F

    return (
        bronze.withColumn("duration_min", elapsed_minutes("pickup_datetime", "dropoff_datetime"))
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
    raise ValueError(f"row rule type {kind} has no Spark predicate: add one to jobs.validation.job.failure_condition")


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
    from jobs.platform.schema import canonical_name

    seen: set[str] = set()
    cols = []
    for c in raw.columns:
        name = canonical_name(c) or c
        if name not in seen:
            seen.add(name)
            cols.append(raw[f"`{c}`"].alias(name))
    return raw.select(*cols)


def with_row_failed(checked):
    """``row_failed``: 1 for a row that breaks any row rule (the month rule's column)."""
    from pyspark.sql import functions as F

    return checked.withColumn("row_failed", (F.size("failed_rules") > 0).cast("int"))


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
        .where(sql.matches(month=add_months(month, -1), verdict="passed"))
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
            T.StructField("landed_file", T.StringType()),
            T.StructField("landed_checksum", T.StringType()),
            T.StructField("set_aside", T.StringType()),  # where a rejected file was kept
        ]
    )
    return spark.createDataFrame([tuple(record[f.name] for f in schema.fields)], schema)


@dataclass(frozen=True)
class Inputs:
    """What one validation reads: the landed file, the month's bronze rows (and the table version) and the suites."""

    landed: Any
    bronze: Any
    bronze_version: int
    file_suite: Suite
    row_suite: Suite


def run(spark, settings: Settings, service: str, month: str) -> dict[str, Any]:
    check_month(month)
    ctx = RunContext.start("validate", spark, settings, service, month)
    started = dt.datetime.now(dt.UTC)  # aware: Spark stores the same instant whatever this machine's zone
    inputs = read_inputs(ctx)
    # The GX project (its config, stores and Data Docs) is shared by every validation of this lakehouse: one at a
    # time, so green and yellow validated together cannot corrupt it.
    with gx_project(settings) as gx_root:
        gx_runner = GxRunner(settings, gx_root)
        with spark_progress(spark, ctx.log):
            file_outcome = check_file(ctx, gx_runner, inputs)
            record = check_rows(ctx, gx_runner, inputs, file_outcome, started)
        stale = settle_month(ctx, inputs, record)
        lakehouse.append(_runs_row(spark, record), settings, lakehouse.VALIDATION_RUNS, ctx.run_id, merge_schema=True)
        write_overview(spark, settings, gx_runner)
        overview = published_root(settings) / OVERVIEW
    ctx.log.info(
        "done",
        verdict=record["verdict"],
        rows=record["rows_total"],
        valid=record["rows_valid"],
        quarantined=record["rows_quarantined"],
        failed_share=round(record["failed_share"], 4),
        data_docs=record["data_docs"],
        overview=overview,
        duration_s=round(ctx.log.elapsed(), 1),
    )
    if record["verdict"] == "rejected":
        raise MonthRejected(f"{service} {month} rejected: {record['reason']}")
    keys = ("verdict", "rows_total", "rows_valid", "rows_quarantined", "failed_share", "data_docs", "run_id")
    return {**{k: record[k] for k in keys}, "overview": str(overview), "stale_features": sorted(stale)}


def read_inputs(ctx: RunContext) -> Inputs:
    """The landed file and the bronze rows it produced (refused when they do not match), and both suites."""
    spark, settings, service, month = ctx.spark, ctx.settings, ctx.service, ctx.period
    landed = ingest.landed_file(settings, service, month)
    if landed is None:
        raise MissingUpstream(f"no landed raw file for {service} {month}: run `taxi ingest` for it first")
    bronze_version = lakehouse.current_version(spark, settings, lakehouse.BRONZE)
    bronze = lakehouse.read_partition(spark, settings, lakehouse.BRONZE, service, month)
    check_bronze_source(bronze, landed, service, month)
    return Inputs(landed, bronze, bronze_version, Suite.load(service, "file"), Suite.load(service, "rows"))


def check_file(ctx: RunContext, gx_runner: GxRunner, inputs: Inputs):
    """File rules on the landed file as it is (CSV releases carry no types: their parsing is a row rule)."""
    settings, landed = ctx.settings, inputs.landed
    raw = raw_with_canonical_names(ingest.read_raw(ctx.spark, landed))
    prev = previous_month_rows(ctx.spark, settings, ctx.service, ctx.period)
    v = settings.validation
    params = {
        "min_rows": int(prev * v.min_rows_vs_previous) if prev else 1,
        "max_rows": int(prev * v.max_rows_vs_previous) if prev else None,
    }
    skip = ("expect_column_values_to_be_in_type_list",) if landed.fmt == "csv" else ()
    outcome = gx_runner.run(inputs.file_suite, raw, params, run_name(ctx), skip_types=skip)
    ctx.log.info("file rules", passed=not outcome.failed, failed=[r.rule for r in outcome.failed])
    return outcome


def run_name(ctx: RunContext) -> str:
    return f"{ctx.service}-{ctx.period}-{ctx.run_id}"


def check_rows(ctx: RunContext, gx_runner: GxRunner, inputs: Inputs, file_outcome, started) -> dict[str, Any]:
    """Row rules on the month's bronze rows: GX's counts, checked against the quarantine predicates; the verdict;
    on a pass, valid rows to silver and failing rows to quarantine. Returns the run's record."""
    settings, month, suite = ctx.settings, ctx.period, inputs.row_suite
    v = settings.validation
    checked = flag_failures(add_rule_columns(inputs.bronze), suite, row_params(settings, month)).cache()
    try:
        outcome = gx_runner.run(
            suite,
            with_row_failed(checked),
            row_params(settings, month),
            run_name(ctx),
            max_failed_share=v.max_failed_share,
        )
        counts = _rule_counts(checked, suite)
        for r in outcome.rules:
            if r.unexpected_count is not None and r.unexpected_count != counts[r.rule]:
                raise RuntimeError(
                    f"rule {r.rule}: GX counted {r.unexpected_count} failing rows, the quarantine predicate "
                    f"{counts[r.rule]}: fix jobs.validation.job.failure_condition"
                )
        total, failing = counts.pop("_total"), counts.pop("_failing")
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
            "run_id": ctx.run_id,
            "service": ctx.service,
            "month": month,
            "started_at": started,
            "duration_s": round(ctx.log.elapsed(), 2),
            "verdict": verdict,
            "reason": "; ".join(reasons) or None,
            "rows_total": total,
            "rows_valid": total - failing if verdict == "passed" else 0,
            "rows_quarantined": failing if verdict == "passed" else 0,
            "failed_share": round(failed_share, 6),
            "rule_failures": counts,
            "file_rules_failed": [r.rule for r in file_outcome.failed],
            "suite_versions": {inputs.file_suite.name: inputs.file_suite.version, suite.name: suite.version},
            "bronze_version": inputs.bronze_version,
            "data_docs": str(published_root(settings) / DOCS_INDEX),
            "landed_file": Path(inputs.landed.path).name,
            "landed_checksum": inputs.landed.checksum,
            "set_aside": None,
        }
        if verdict == "passed":
            _write_outputs(checked, suite, settings, ctx.run_id, ctx.service, month)
    finally:
        checked.unpersist()
    return record


def settle_month(ctx: RunContext, inputs: Inputs, record: dict[str, Any]) -> dict:
    """A passed month is accepted in the raw zone (returns the features it made stale); a rejected one is undone
    and its file set aside (``record["set_aside"]``)."""
    settings, service, month = ctx.settings, ctx.service, ctx.period
    if record["verdict"] == "passed":
        ingest.mark_accepted(settings, service, month, inputs.landed, inputs.bronze_version)
        stale = freshness.made_stale_by(settings, service, month)
        if stale:
            ctx.log.warning(
                "features now stale: rerun `taxi features` for them, in month order", months=",".join(sorted(stale))
            )
        return stale
    set_aside = undo_landing(ctx.spark, settings, service, month, inputs.landed, ctx.run_id, record["reason"])
    record["set_aside"] = str(set_aside)
    ctx.log.info("rejected file set aside", file=record["set_aside"])
    return {}


def check_bronze_source(bronze, landed, service: str, month: str) -> None:
    """The bronze rows must come from the landed file (an interrupted landing or restore would mix two files)."""
    sources = {r.source_checksum for r in bronze.select("source_checksum").distinct().collect()}
    if sources != {landed.checksum}:
        raise MissingUpstream(
            f"{service} {month}: the bronze rows come from file checksum(s) {sorted(s[:12] for s in sources)}, the "
            f"landed file {Path(landed.path).name} is {landed.checksum[:12]}: rerun `taxi ingest --service {service} "
            f"--month {month}`"
        )


def undo_landing(spark, settings: Settings, service: str, month: str, landed, run_id: str, reason: str) -> Path:
    """A rejected file costs nothing: bronze gets back the rows of the last accepted file (none if there is none),
    the raw zone gets the accepted file back, and the rejected file is kept aside with its reason. Bronze first:
    if the job dies between the two steps, the checksum check above makes the next validation say so."""
    accepted = ingest.accepted_landing(settings, service, month)
    where = lakehouse.partition_predicate(service, month)
    if accepted is None:
        restored = lakehouse.read(spark, settings, lakehouse.BRONZE).where("false")
    else:
        restored = lakehouse.read(spark, settings, lakehouse.BRONZE, accepted[1]).where(where)
    lakehouse.replace_partition(restored, settings, lakehouse.BRONZE, run_id, service, month)
    return ingest.set_aside_rejected(settings, service, month, landed, run_id, reason)


def write_overview(spark, settings: Settings, gx_runner: GxRunner) -> Path:
    """Refresh the validation overview page from every recorded run."""
    runs = [r.asDict(recursive=True) for r in lakehouse.read(spark, settings, lakehouse.VALIDATION_RUNS).collect()]
    return validation_overview.write(runs, gx_runner.overview_page, gx_runner.docs_index.parent)


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

    from jobs.platform.schema import BRONZE_COLUMNS

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
