"""The one normalised trip schema every TLC release is mapped into (the bronze table's columns).

Names follow the TLC data dictionary, without the service prefixes (``tpep_``/``lpep_``) and with
``airport_fee`` in lower case; IDs and codes are integers whatever type a release stored them as.
"""

from __future__ import annotations

# (canonical name, Spark SQL type); order is the bronze column order. Pickup and dropoff are New York wall-clock
# times, as the TLC publishes them: TIMESTAMP_NTZ (no time zone), so no reader's or machine's zone shifts them.
TRIP_COLUMNS: list[tuple[str, str]] = [
    ("VendorID", "int"),
    ("pickup_datetime", "timestamp_ntz"),
    ("dropoff_datetime", "timestamp_ntz"),
    ("store_and_fwd_flag", "string"),
    ("RatecodeID", "int"),
    ("PULocationID", "int"),
    ("DOLocationID", "int"),
    ("passenger_count", "int"),
    ("trip_distance", "double"),
    ("fare_amount", "double"),
    ("extra", "double"),
    ("mta_tax", "double"),
    ("tip_amount", "double"),
    ("tolls_amount", "double"),
    ("ehail_fee", "double"),
    ("improvement_surcharge", "double"),
    ("total_amount", "double"),
    ("payment_type", "int"),
    ("trip_type", "int"),
    ("congestion_surcharge", "double"),
    ("airport_fee", "double"),
    ("cbd_congestion_fee", "double"),
]

# Metadata columns ingest adds to every row.
META_COLUMNS: list[tuple[str, str]] = [
    ("cast_errors", "array<string>"),
    ("duplicate_rank", "int"),  # 1 for the first copy of a row in its file, 2.. for exact duplicates
    ("source_file", "string"),
    ("source_checksum", "string"),
    ("ingested_at", "timestamp"),  # an instant (UTC)
    ("service", "string"),
    ("month", "string"),
]

# The bronze table's columns, in order: a stable ID, the trip, then ingestion metadata and the partitions.
BRONZE_COLUMNS: list[tuple[str, str]] = [("trip_id", "string"), *TRIP_COLUMNS, *META_COLUMNS]

# Raw column names (lower-cased) that map to a canonical name other than their own.
RAW_ALIASES = {
    "tpep_pickup_datetime": "pickup_datetime",
    "lpep_pickup_datetime": "pickup_datetime",
    "tpep_dropoff_datetime": "dropoff_datetime",
    "lpep_dropoff_datetime": "dropoff_datetime",
}

# Columns without which a file is not a TLC trip file at all (ingest refuses it).
REQUIRED_RAW = ("pickup_datetime", "dropoff_datetime", "PULocationID", "DOLocationID")


def canonical_name(raw: str) -> str | None:
    """Map a raw column name of any release to its canonical name (None: not a trip column)."""
    low = raw.strip().lower()
    if low in RAW_ALIASES:
        return RAW_ALIASES[low]
    for name, _ in TRIP_COLUMNS:
        if name.lower() == low:
            return name
    return None
