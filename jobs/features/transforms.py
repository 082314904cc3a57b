"""The feature transforms: pure DataFrame -> DataFrame functions, each known at pickup time only (the target and
the training-range flag excepted), composed by :func:`trip_features`. History features come from the rows passed in
as ``past_trips``, which the job takes from EARLIER months only."""

from __future__ import annotations

from jobs.features import freshness
from jobs.models.inputs import BOROUGHS, MODEL_FEATURES, SERVICE_ZONES, TARGET
from jobs.platform.months import elapsed_minutes

EARTH_RADIUS_KM = 6371.0088


# History levels, finest first: the first level with enough trips in the window supplies the statistics.
HISTORY_LEVELS: list[tuple[str, list[str]]] = [
    ("pair_hour_of_week", ["PULocationID", "DOLocationID", "hour_of_week"]),
    ("pair", ["PULocationID", "DOLocationID"]),
    ("pickup_zone", ["PULocationID"]),
    ("borough_pair", ["pu_borough", "do_borough"]),
    ("global", []),
]


HISTORY_COLUMNS = ["hist_median_duration_min", "hist_median_speed_mph", "hist_trip_count", "hist_level"]


# ---------------------------------------------------------------------------------------------------------------
# Pure transforms (DataFrame -> DataFrame)
# ---------------------------------------------------------------------------------------------------------------
def add_duration(trips):
    """``duration_min``: minutes elapsed from pickup to dropoff, across DST changes (the target; known only after
    the trip)."""
    return trips.withColumn(TARGET, elapsed_minutes("pickup_datetime", "dropoff_datetime"))


def add_time_features(df, holidays: list[str]):
    """Time of day (continuous hours), ISO day of week (1 = Monday), hour of week (0-167), weekend, holiday."""
    from pyspark.sql import functions as F

    ts = F.col("pickup_datetime")
    dow = (F.dayofweek(ts) + 5) % 7 + 1  # Spark: 1 = Sunday; ISO: 1 = Monday
    return (
        df.withColumn("pickup_hour", F.hour(ts) + F.minute(ts) / 60.0 + F.second(ts) / 3600.0)
        .withColumn("day_of_week", dow)
        .withColumn("hour_of_week", (dow - 1) * 24 + F.hour(ts))
        .withColumn("is_weekend", (dow >= 6).cast("int"))
        .withColumn("is_holiday", F.date_format(ts, "yyyy-MM-dd").isin(holidays).cast("int"))
    )


def add_zone_features(df, zones):
    """Boroughs, service zones, centroids and airport flags of both ends (``zones``: see :func:`zone_table`)."""
    from pyspark.sql import functions as F

    for end, col in (("pu", "PULocationID"), ("do", "DOLocationID")):
        z = zones.select(
            F.col("LocationID").alias(col),
            *[F.col(c).alias(f"{end}_{c}") for c in ("borough", "service_zone", "zone", "lon", "lat")],
        )
        df = df.join(F.broadcast(z), col, "left")
        df = (
            df.withColumn(f"{end}_borough", F.coalesce(F.col(f"{end}_borough"), F.lit("Unknown")))
            .withColumn(f"{end}_service_zone", F.coalesce(F.col(f"{end}_service_zone"), F.lit("N/A")))
            .withColumn(f"{end}_borough_code", _code(f"{end}_borough", BOROUGHS))
            .withColumn(f"{end}_service_zone_code", _code(f"{end}_service_zone", SERVICE_ZONES))
            .withColumn(
                f"{end}_airport",
                (F.col(f"{end}_service_zone").isin("Airports", "EWR")).cast("int"),
            )
        )
    return df.withColumn("same_zone", (F.col("PULocationID") == F.col("DOLocationID")).cast("int"))


def _code(col: str, values: list[str]):
    from pyspark.sql import functions as F

    expr = F.lit(None).cast("int")
    for i, v in enumerate(values):
        expr = F.when(F.col(col) == v, F.lit(i)).otherwise(expr)
    return expr


def add_geo_features(df):
    """Great-circle distance (km) and initial bearing (degrees, 0 = north) between the zone centroids."""
    from pyspark.sql import functions as F

    lat1, lat2 = F.radians("pu_lat"), F.radians("do_lat")
    dlat = lat2 - lat1
    dlon = F.radians("do_lon") - F.radians("pu_lon")
    a = F.sin(dlat / 2) ** 2 + F.cos(lat1) * F.cos(lat2) * F.sin(dlon / 2) ** 2
    dist = 2 * EARTH_RADIUS_KM * F.asin(F.sqrt(a))
    y = F.sin(dlon) * F.cos(lat2)
    x = F.cos(lat1) * F.sin(lat2) - F.sin(lat1) * F.cos(lat2) * F.cos(dlon)
    bearing = (F.degrees(F.atan2(y, x)) + 360) % 360
    return df.withColumn("centroid_distance_km", dist).withColumn("centroid_bearing_deg", bearing)


def add_target_flag(df, min_minutes: float, max_minutes: float):
    """``in_training_range``: whether the trip passes the training filter (stored, applied at training only)."""
    from pyspark.sql import functions as F

    return df.withColumn("in_training_range", F.col(TARGET).between(min_minutes, max_minutes))


def history_stats(past_trips, level: str, keys: list[str]):
    """Median duration, median speed and trip count per group of ``keys`` over past trips (in training range)."""
    from pyspark.sql import functions as F

    hours = F.col(TARGET) / 60.0
    speed = F.when((F.col("trip_distance") > 0) & (hours > 0), F.col("trip_distance") / hours)
    grouped = past_trips.groupBy(*keys) if keys else past_trips.groupBy()
    return grouped.agg(
        F.median(TARGET).alias(f"{level}_dur"),
        F.median(speed).alias(f"{level}_speed"),
        F.count(F.lit(1)).alias(f"{level}_n"),
    )


def add_history_features(df, past_trips, min_trips: int):
    """Join each level's history and keep the finest level with at least ``min_trips`` past trips.

    ``past_trips`` must already carry the columns the levels group by (zone and time features) and hold only
    trips from months before ``df``'s month. With no past trips at all the history columns stay null.
    """
    from pyspark.sql import functions as F

    dur = speed = n = level = F.lit(None)
    for i, (name, keys) in reversed(list(enumerate(HISTORY_LEVELS))):
        stats = history_stats(past_trips, name, keys)
        df = df.join(F.broadcast(stats), keys, "left") if keys else df.crossJoin(F.broadcast(stats))
        enough = F.col(f"{name}_n") >= min_trips
        dur = F.when(enough, F.col(f"{name}_dur")).otherwise(dur)
        speed = F.when(enough, F.col(f"{name}_speed")).otherwise(speed)
        n = F.when(enough, F.col(f"{name}_n")).otherwise(n)
        level = F.when(enough, F.lit(i)).otherwise(level)
    df = (
        df.withColumn("hist_median_duration_min", dur.cast("double"))
        .withColumn("hist_median_speed_mph", speed.cast("double"))
        .withColumn("hist_trip_count", n.cast("long"))
        .withColumn("hist_level", level.cast("int"))
    )
    return df.drop(*[f"{name}_{s}" for name, _ in HISTORY_LEVELS for s in ("dur", "speed", "n")])


def trip_features(trips, zones, holidays: list[str], min_minutes: float, max_minutes: float):
    """Validated trips -> per-trip features (everything except history)."""
    return (
        trips.transform(add_duration)
        .transform(lambda d: add_time_features(d, holidays))
        .transform(lambda d: add_zone_features(d, zones))
        .transform(add_geo_features)
        .transform(lambda d: add_target_flag(d, min_minutes, max_minutes))
    )


OUTPUT_COLUMNS = [
    "trip_id",
    "pickup_datetime",
    "pu_borough",
    "do_borough",
    "pu_zone",
    "do_zone",
    *MODEL_FEATURES,
    TARGET,
    "in_training_range",
    "feature_set_version",
    "features_run_id",
    freshness.COLUMN,
    "service",
    "month",
]
