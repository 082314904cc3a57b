"""Synthetic monthly TLC files of any size, in the real schema, for benchmarks.

A smoothed bootstrap of the real months the repo ships: rows are resampled from the real files of the service
(so zone popularity, the pickup-time profile, distance and speed per zone pair, null patterns, refunds and
outliers all keep their real joint distribution and rates), then distance and duration get multiplicative
log-normal noise (fares scale with distance) and each pickup is moved onto the target month at the same
position in the week (hour of week kept). Rows whose real pickup fell outside its file's month keep that
offset, so the target file has the real share of out-of-month pickups. Pure numpy/pyarrow: no Spark needed.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.platform import storage
from jobs.platform.config import Settings
from jobs.platform.errors import InputError
from jobs.platform.months import add_months, check_month, check_service, month_start
from jobs.platform.schema import canonical_name

FARE_COLUMNS = ("fare_amount", "tip_amount", "total_amount")
JITTER_SIGMA = 0.08
CHUNK_ROWS = 500_000


def load_reference(settings: Settings, service: str) -> tuple[pd.DataFrame, pa.Schema]:
    """The shipped real rows of a service (canonical names) and the newest release's arrow schema."""
    files = sorted(p for p in (settings.data.sample_dir / service).glob(f"{service}_tripdata_*.parquet"))
    if not files:
        raise InputError(f"no real {service} months under {settings.data.sample_dir / service} to fit from")
    frames = []
    for f in files:
        df = pq.read_table(f).to_pandas()
        df = df.rename(columns={c: canonical_name(c) or c for c in df.columns})
        file_month = f.name.split("_tripdata_")[1][:7]
        df["_month_start"] = pd.Timestamp(file_month + "-01")
        frames.append(df)
    ref = pd.concat(frames, ignore_index=True)
    return ref, pq.read_schema(files[-1])


def generate(ref: pd.DataFrame, month: str, rows: int, rng: np.random.Generator) -> pd.DataFrame:
    """``rows`` synthetic trips for ``month`` from the reference rows (canonical column names)."""
    idx = rng.integers(0, len(ref), rows)
    out = ref.iloc[idx].reset_index(drop=True)
    pickup = out["pickup_datetime"]
    duration = out["dropoff_datetime"] - pickup
    # Same position in the week, on the target month: offset from the source month's first Monday.
    src_start = out.pop("_month_start")
    src_monday = src_start - pd.to_timedelta(src_start.dt.dayofweek, unit="D")
    tgt_start = pd.Timestamp(month_start(month))
    tgt_monday = tgt_start - pd.Timedelta(days=tgt_start.dayofweek)
    offset = pickup - src_monday
    # Spread the source month's weeks uniformly over the target month's weeks, keeping the day/time of week.
    n_weeks = (pd.Timestamp(month_start(add_months(month, 1))) - tgt_monday).days // 7 + 1
    in_month = (pickup >= src_start) & (pickup < src_start + pd.offsets.MonthBegin(1))
    week_of_day = offset % pd.Timedelta(days=7)
    new_pickup = tgt_monday + pd.to_timedelta(rng.integers(0, n_weeks, rows) * 7, unit="D") + week_of_day
    # Rows that land outside the target month are redrawn into it; real out-of-month rows keep their offset.
    tgt_end = pd.Timestamp(month_start(add_months(month, 1)))
    outside = in_month & ((new_pickup < tgt_start) | (new_pickup >= tgt_end))
    while outside.any():
        redraw = tgt_monday + pd.to_timedelta(rng.integers(0, n_weeks, outside.sum()) * 7, unit="D")
        new_pickup[outside] = redraw + week_of_day[outside]
        outside = in_month & ((new_pickup < tgt_start) | (new_pickup >= tgt_end))
    jitter = pd.to_timedelta(rng.integers(-300, 300, rows), unit="s")
    new_pickup = (new_pickup + jitter).clip(tgt_start, tgt_end - pd.Timedelta(seconds=1))
    new_pickup = new_pickup.where(in_month, tgt_start + (pickup - src_start))
    scale_d = np.exp(rng.normal(0.0, JITTER_SIGMA, rows))
    scale_t = np.exp(rng.normal(0.0, JITTER_SIGMA, rows))
    out["pickup_datetime"] = new_pickup.dt.floor("s")
    out["dropoff_datetime"] = out["pickup_datetime"] + (duration * scale_t).dt.floor("s")
    out["trip_distance"] = (out["trip_distance"] * scale_d).round(2)
    for c in FARE_COLUMNS:
        if c in out:
            out[c] = (out[c] * scale_d).round(2)
    return out


def to_release_table(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Canonical columns -> the release's column names and arrow types."""
    arrays = []
    for field in schema:
        name = canonical_name(field.name)
        col = df[name] if name in df else pd.Series([None] * len(df))
        if field.name.endswith(("pickup_datetime", "dropoff_datetime")):
            col = col.astype("datetime64[us]")
        arrays.append(pa.array(col, type=field.type, from_pandas=True, safe=False))
    return pa.Table.from_arrays(arrays, schema=schema)


def run(settings: Settings, service: str, month: str, rows: int, out: str | None = None, seed: int = 7) -> dict:
    check_service(service)
    check_month(month)
    if rows <= 0:
        raise InputError(f"--rows must be positive, got {rows}")
    ref, schema = load_reference(settings, service)
    if month < "2025-01" and "cbd_congestion_fee" in schema.names:  # the fee exists from 2025 on
        schema = schema.remove(schema.get_field_index("cbd_congestion_fee"))
    if not out and storage.is_remote(settings.lakehouse):
        raise InputError(
            f"{service} {month}: the lakehouse is on object storage: give --out, a local path that "
            "`taxi ingest --source` then lands from"
        )
    target = Path(out) if out else settings.lakehouse / "synth" / f"{service}_tripdata_{month}.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    rng = np.random.default_rng(seed)
    started = dt.datetime.now()
    with pq.ParquetWriter(tmp, schema) as writer:
        done = 0
        while done < rows:
            n = min(CHUNK_ROWS, rows - done)
            writer.write_table(to_release_table(generate(ref, month, n, rng), schema))
            done += n
    tmp.replace(target)
    return {
        "path": str(target),
        "rows": rows,
        "fitted_on_rows": len(ref),
        "seconds": round((dt.datetime.now() - started).total_seconds(), 1),
    }
