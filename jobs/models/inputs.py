"""The model's input contract: the feature columns every learner sees, in order, the target and the prediction.

The features stage writes these columns; every model flavour reads them; scoring writes the prediction column.
Every feature is numeric (codes for categories); nulls mean "unknown".
"""

# What the learners see, in order. Every one is numeric (codes for categories); nulls mean "unknown".
MODEL_FEATURES = [
    "PULocationID",
    "DOLocationID",
    "pu_borough_code",
    "do_borough_code",
    "pu_service_zone_code",
    "do_service_zone_code",
    "pu_lon",
    "pu_lat",
    "do_lon",
    "do_lat",
    "centroid_distance_km",
    "centroid_bearing_deg",
    "pu_airport",
    "do_airport",
    "same_zone",
    "pickup_hour",
    "day_of_week",
    "hour_of_week",
    "is_weekend",
    "is_holiday",
    "VendorID",
    "RatecodeID",
    "trip_type",
    "passenger_count",
    "trip_distance",
    "hist_median_duration_min",
    "hist_median_speed_mph",
    "hist_trip_count",
    "hist_level",
]


TARGET = "duration_min"


PREDICTION = "predicted_duration_min"


BOROUGHS = ["Bronx", "Brooklyn", "EWR", "Manhattan", "Queens", "Staten Island", "Unknown", "N/A"]


SERVICE_ZONES = ["Airports", "Boro Zone", "EWR", "Yellow Zone", "N/A"]
