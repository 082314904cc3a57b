"""Ingest: land one monthly TLC file in the raw zone and write all its rows to ``bronze/trips``.

Every row is kept, bad ones included: validation decides later. Each release's schema (``tpep_``/``lpep_``
prefixes, ``Airport_fee`` vs ``airport_fee``, double vs int IDs, the original CSV releases) is mapped onto the
one schema in :mod:`jobs.platform.schema`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from jobs.ingest.publication import default_source
from jobs.platform import lakehouse, storage
from jobs.platform.config import Settings
from jobs.platform.context import RunContext
from jobs.platform.errors import InputError
from jobs.platform.log import JobLog
from jobs.platform.months import check_month
from jobs.platform.schema import REQUIRED_RAW, TRIP_COLUMNS, canonical_name

PARQUET_MAGIC = b"PAR1"


@dataclass
class LandedFile:
    path: str
    source: str
    checksum: str
    fmt: str  # "parquet" | "csv"
    size_bytes: int
    columns: dict[str, str]  # raw column name -> type as the file stores it


# ---------------------------------------------------------------------------------------------------------------
# Pure transforms
# ---------------------------------------------------------------------------------------------------------------
def normalise(raw, service: str, month: str, source_file: str, checksum: str, ingested_at: dt.datetime):
    """Raw DataFrame of any TLC release -> the bronze schema (values cast, metadata and ``trip_id`` added).

    A non-empty raw value that cannot be parsed into its column's type becomes null and its column name is
    listed in ``cast_errors``, so validation can quarantine the row with that reason instead of losing it.
    """
    from pyspark.sql import functions as F

    by_canonical = {}
    for c in raw.columns:
        name = canonical_name(c)
        if name and name not in by_canonical:
            by_canonical[name] = c
    raw_types = dict(raw.dtypes)
    values, errors = [], []
    for name, typ in TRIP_COLUMNS:
        src_name = by_canonical.get(name)
        if src_name is None:
            values.append(F.lit(None).cast(typ).alias(name))
            continue
        src = F.col(f"`{src_name}`")
        if raw_types[src_name] == "string":
            src = F.when(F.trim(src) != "", F.trim(src))
            # "1.0" is a valid integer code in some releases: go through double.
            parsed = src.cast("double").cast(typ) if typ == "int" else src.cast(typ)
            errors.append(F.when(src.isNotNull() & parsed.isNull(), F.lit(name)))
        else:
            parsed = src.cast(typ)
        values.append(parsed.alias(name))

    df = raw.select(*values, F.array_compact(F.array(*errors)) if errors else F.array().cast("array<string>"))
    df = df.withColumnRenamed(df.columns[-1], "cast_errors")
    return df.transform(lambda d: add_trip_id(d, service, month)).select(
        "trip_id",
        *[n for n, _ in TRIP_COLUMNS],
        "cast_errors",
        "duplicate_rank",
        F.lit(source_file).alias("source_file"),
        F.lit(checksum).alias("source_checksum"),
        F.lit(ingested_at).cast("timestamp").alias("ingested_at"),
        F.lit(service).alias("service"),
        F.lit(month).alias("month"),
    )


def add_trip_id(df, service: str, month: str):
    """Stable, unique ``trip_id``: a hash of the row's content plus its rank among identical rows.

    It does not depend on row order or partitioning, so reruns (and a re-published file with the same rows
    in another order) give the same IDs; identical rows, which real files contain, still get distinct IDs.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    content = F.sha2(
        F.concat_ws("\u0001", *[F.coalesce(F.col(n).cast("string"), F.lit("\\N")) for n, _ in TRIP_COLUMNS]),
        256,
    )
    w = Window.partitionBy("_content").orderBy("_content")
    return (
        df.withColumn("_content", content)
        .withColumn("_dup", F.row_number().over(w))
        .withColumn(
            "trip_id",
            F.substring(F.sha2(F.concat_ws("|", F.lit(service), F.lit(month), "_content", "_dup"), 256), 1, 32),
        )
        .withColumnRenamed("_dup", "duplicate_rank")
        .drop("_content")
    )


def share_in_month(bronze, month: str) -> tuple[int, float]:
    """Row count and the share of rows whose pickup falls in ``month``."""
    from pyspark.sql import functions as F

    row = bronze.agg(
        F.count(F.lit(1)).alias("n"),
        F.sum((F.date_format("pickup_datetime", "yyyy-MM") == month).cast("int")).alias("in_month"),
    ).first()
    n = int(row["n"])
    return n, (int(row["in_month"] or 0) / n if n else 0.0)


# ---------------------------------------------------------------------------------------------------------------
# Landing (file system side)
# ---------------------------------------------------------------------------------------------------------------
def _local_path(settings: Settings, source: str, label: str) -> Path:
    path = Path(urllib.parse.urlparse(source).path if source.startswith("file://") else source).resolve()
    _require_allowed(settings, path, f"{label}: source {source}")
    if not path.is_file():
        raise InputError(f"{label}: source file not found: {path}")
    return path


def check_source_dir(settings: Settings, directory: Path, label: str) -> Path:
    """A folder of source files (``taxi backtest --source-dir``): it must exist under one of the allowed roots."""
    path = Path(directory).resolve()
    _require_allowed(settings, path, f"{label}: folder {path}")
    if not path.is_dir():
        raise InputError(f"{label}: source folder not found: {path}")
    return path


def _require_allowed(settings: Settings, path: Path, what: str) -> None:
    if not any(path.is_relative_to(root.resolve()) for root in settings.data.allowed_roots):
        roots = ", ".join(str(r) for r in settings.data.allowed_roots)
        raise InputError(f"{what} is outside the allowed roots ({roots}): set data.allowed_roots")


def sha256(path) -> str:
    """Of a local or lakehouse file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def inspect_file(path: Path, label: str) -> tuple[str, dict[str, str]]:
    """Detect the format from the bytes and read the column names/types; clear errors for bad files."""
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{label}: file {path.name} is empty")
    with path.open("rb") as f:
        head = f.read(4)
        f.seek(max(0, size - 4))
        tail = f.read(4)
    if head == PARQUET_MAGIC:
        if tail != PARQUET_MAGIC:
            raise InputError(f"{label}: file {path.name} is a truncated parquet file (no footer)")
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(path)
        except Exception as e:  # corrupt footer
            raise InputError(f"{label}: file {path.name} is an unreadable parquet file: {e}") from e
        return "parquet", {n: str(t) for n, t in zip(schema.names, schema.types, strict=True)}
    with path.open("rb") as f:
        first = f.readline(65536)
    try:
        header = first.decode("utf-8-sig").strip()
    except UnicodeDecodeError as e:
        raise InputError(f"{label}: file {path.name} is neither parquet nor a CSV text file") from e
    if "," not in header:
        raise InputError(f"{label}: file {path.name} is neither parquet nor CSV with a header row")
    return "csv", {c.strip().strip('"'): "string" for c in header.split(",")}


def check_trip_columns(columns: dict[str, str], label: str, filename: str) -> None:
    present = {canonical_name(c) for c in columns}
    missing = [c for c in REQUIRED_RAW if c not in present]
    if missing:
        raise InputError(f"{label}: file {filename} is not a TLC trip file: missing column(s) {', '.join(missing)}")


# Each service's own timestamp columns (every release since 2013 for green, since 2015 for yellow): a file
# carrying the other service's prefix is the other service's file.
SERVICE_PREFIX = {"green": "lpep_", "yellow": "tpep_"}


def check_service_columns(columns: dict[str, str], service: str, label: str, filename: str) -> None:
    """Refuse the other service's file before anything is landed, naming the columns that gave it away."""
    for other, prefix in SERVICE_PREFIX.items():
        found = [c for c in columns if other != service and c.strip().lower().startswith(prefix)]
        if found:
            raise InputError(
                f"{label}: file {filename} is a {other} taxi file, not {service}: column(s) {', '.join(found)} "
                f"carry the {other} prefix {prefix} ({service} files use {SERVICE_PREFIX[service]})"
            )


def stage(settings: Settings, service: str, month: str, source: str, log: JobLog) -> LandedFile:
    """Copy or download the source into a private staging folder of the raw zone and check it is a TLC trip file.

    Nothing in the raw zone outside ``_staging`` changes until :func:`commit_landing`, so a refused file leaves no
    trace. The checks read a local copy: on object storage it is fetched to a temporary folder and uploaded to
    the staging folder only once it passes.
    """
    label = f"{service} {month}"
    name = Path(urllib.parse.urlparse(source).path).name or f"{service}_tripdata_{month}.parquet"
    staging = settings.raw_dir / "_staging" / lakehouse.new_run_id(f"{service}-{month}")
    work = Path(tempfile.mkdtemp(prefix="taxi-stage-")) if storage.is_remote(staging) else staging
    work.mkdir(parents=True, exist_ok=True)
    local = work / name
    try:
        if source.startswith(("http://", "https://")):
            log.info("downloading", url=source)
            try:
                with (
                    urllib.request.urlopen(source, timeout=settings.ingest.download_timeout_s) as r,
                    open(local, "wb") as out,
                ):
                    shutil.copyfileobj(r, out)
            except OSError as e:
                raise InputError(f"{label}: could not download {source}: {e}") from e
        else:
            shutil.copyfile(_local_path(settings, source, label), local)
        fmt, columns = inspect_file(local, label)
        check_trip_columns(columns, label, name)
        check_service_columns(columns, service, label, name)
        staged = LandedFile(str(staging / name), source, sha256(local), fmt, local.stat().st_size, columns)
        if work != staging:
            storage.upload(local, staging / name)
    except BaseException:
        storage.remove_tree(staging)
        raise
    finally:
        if work != staging:
            shutil.rmtree(work, ignore_errors=True)
    return staged


def commit_landing(settings: Settings, service: str, month: str, staged: LandedFile) -> LandedFile:
    """Move the staged file into ``raw/<service>/<month>/`` (replacing an earlier landing) with its checksum."""
    target_dir = settings.raw_dir / service / month
    storage.makedirs(target_dir)
    src = storage.location(staged.path)
    # One landed file per month: a re-land replaces it (the accepted copy stays).
    for old in target_dir.iterdir() if target_dir.exists() else ():
        if old.is_file() and old.name != src.name:
            old.unlink()
    final = target_dir / src.name
    storage.move(src, final)
    storage.remove_tree(src.parent)
    landed = LandedFile(**{**asdict(staged), "path": str(final)})
    (target_dir / f"{src.name}.sha256").write_text(f"{landed.checksum}  {src.name}\n")
    (target_dir / "_landing.json").write_text(json.dumps(asdict(landed), indent=1))
    return landed


ACCEPTED = "_accepted"  # raw/<service>/<month>/_accepted/: a copy of the last file validation accepted


def mark_accepted(settings: Settings, service: str, month: str, landed: LandedFile, bronze_version: int) -> None:
    """Keep the accepted file (a hard link where the file system allows) and the bronze version holding its rows,
    so a later rejected re-landing can be undone."""
    folder = settings.raw_dir / service / month / ACCEPTED
    staging = folder.with_name(f".{ACCEPTED}-{os.getpid()}")
    storage.remove_tree(staging)
    storage.makedirs(staging)
    src = storage.location(landed.path)
    storage.copy(src, staging / src.name)
    (staging / "_landing.json").write_text(json.dumps({**asdict(landed), "bronze_version": bronze_version}, indent=1))
    storage.copy(src.parent / "_landing.json", staging / "_landing.month.json")  # put back verbatim on a restore
    storage.remove_tree(folder)
    storage.move(staging, folder)


def set_aside_rejected(settings: Settings, service: str, month: str, landed: LandedFile, run_id: str, reason: str):
    """Move a rejected landed file to ``raw/_rejected/<service>/<month>/<run_id>/`` with its checksum and reason, and
    put the last accepted file (if any) back in its place. Returns the rejected file's new location."""
    month_dir = settings.raw_dir / service / month
    aside = settings.raw_dir / "_rejected" / service / month / run_id
    storage.makedirs(aside)
    src = storage.location(landed.path)
    storage.move(src, aside / src.name)
    (aside / "_rejected.json").write_text(
        json.dumps({**asdict(landed), "path": str(aside / src.name), "run_id": run_id, "reason": reason}, indent=1)
    )
    for leftover in (month_dir / f"{src.name}.sha256", month_dir / "_landing.json"):
        if leftover.exists():
            leftover.unlink()
    accepted = accepted_landing(settings, service, month)
    if accepted is not None:
        landed_back, _ = accepted
        name = Path(landed_back.path).name
        storage.copy(month_dir / ACCEPTED / name, month_dir / name)
        (month_dir / f"{name}.sha256").write_text(f"{landed_back.checksum}  {name}\n")
        storage.copy(month_dir / ACCEPTED / "_landing.month.json", month_dir / "_landing.json")
    return aside / src.name


def accepted_landing(settings: Settings, service: str, month: str) -> tuple[LandedFile, int] | None:
    """The last accepted landing of the month and the bronze version holding its rows, if there is one."""
    manifest = settings.raw_dir / service / month / ACCEPTED / "_landing.json"
    if not storage.exists(manifest):
        return None
    data = json.loads(manifest.read_text())
    version = data.pop("bronze_version")
    return LandedFile(**{**data, "path": str(manifest.parent / Path(data["path"]).name)}), int(version)


def discard(staged: LandedFile) -> None:
    storage.remove_tree(storage.location(staged.path).parent)


def landed_file(settings: Settings, service: str, month: str) -> LandedFile | None:
    """The month's landed file, located in this lakehouse's raw zone (so a copied or moved lakehouse still works)."""
    manifest = settings.raw_dir / service / month / "_landing.json"
    if not storage.exists(manifest):
        return None
    landed = json.loads(manifest.read_text())
    return LandedFile(**{**landed, "path": str(manifest.parent / Path(landed["path"]).name)})


def read_raw(spark, landed: LandedFile):
    if landed.fmt == "parquet":
        return spark.read.parquet(landed.path)
    # All strings: `normalise` parses each column and records what does not parse.
    return spark.read.option("header", True).option("inferSchema", False).option("mode", "PERMISSIVE").csv(landed.path)


# ---------------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------------
def run(spark, settings: Settings, service: str, month: str, source: str | None = None) -> dict:
    check_month(month)
    ctx = RunContext.start("ingest", spark, settings, service, month)
    log = ctx.log
    source = source or default_source(settings, service, month)
    staged = stage(settings, service, month, source, log)
    name = Path(staged.path).name
    log.debug("staged", file=name, format=staged.fmt, bytes=staged.size_bytes, sha256=staged.checksum[:12])
    try:
        ingested_at = dt.datetime.now(dt.UTC).replace(microsecond=0)  # aware: the same instant in any local zone
        bronze = normalise(read_raw(spark, staged), service, month, name, staged.checksum, ingested_at)
        rows, share = share_in_month(bronze, month)
        if rows == 0:
            raise InputError(f"{service} {month}: file {name} has no rows")
        if share < settings.ingest.min_share_in_month:
            raise InputError(
                f"{service} {month}: file {name} looks like another month's file: only {share:.0%} of "
                f"pickup_datetime values fall in {month} (need {settings.ingest.min_share_in_month:.0%})"
            )
        version = lakehouse.replace_partition(bronze, settings, lakehouse.BRONZE, ctx.run_id, service, month)
    except BaseException:
        discard(staged)
        raise
    landed = commit_landing(settings, service, month, staged)
    summary = {"rows": rows, "share_in_month": round(share, 4), "bronze_version": version, "run_id": ctx.run_id}
    log.info(
        "done",
        file=landed.path,
        format=staged.fmt,
        sha256=staged.checksum[:12],
        **summary,
        duration_s=round(log.elapsed(), 1),
    )
    return summary
