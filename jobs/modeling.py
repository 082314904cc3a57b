"""What training, scoring and monitoring share: the model's inputs, vectorised prediction, metrics, registry access.

Models are logged to MLflow in their native flavour (``flavors.py``: xgboost/lightgbm Boosters trained on Spark, the
Keras challenger, the ensemble pyfunc), so the scoring job needs neither the training code nor the JVM learners:
it predicts in place over Arrow batches in ``mapInArrow``. The target is learned on a log scale (``log1p``
minutes); :func:`predict_minutes` returns minutes.
"""

from __future__ import annotations

import time

from .config import Settings
from .errors import MissingUpstream, ServiceUnavailable
from .features import MODEL_FEATURES, TARGET
from .flavors import NativeModel, cached_predictor, load_model, predict_log  # noqa: F401  (re-exported: the model every job passes around)

PREDICTION = "predicted_duration_min"
HOUR_BANDS = [("night", 0, 6), ("morning_peak", 6, 10), ("midday", 10, 16), ("evening_peak", 16, 20), ("late", 20, 24)]
DISTANCE_BANDS = [("0-1mi", 0, 1), ("1-2mi", 1, 2), ("2-5mi", 2, 5), ("5-10mi", 5, 10), ("10mi_plus", 10, None)]


def feature_matrix(pdf):
    """pandas rows -> float32 matrix in MODEL_FEATURES order, nulls as NaN (what the boosters saw in training)."""
    import numpy as np

    return pdf[MODEL_FEATURES].astype("float64").to_numpy(dtype=np.float32, na_value=np.nan)


def arrow_feature_matrix(batch):
    """Arrow record batch -> C-ordered float32 matrix in MODEL_FEATURES order, nulls as NaN (no pandas round trip)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    matrix = np.empty((batch.num_rows, len(MODEL_FEATURES)), dtype=np.float32)
    for j, name in enumerate(MODEL_FEATURES):
        column = pc.cast(batch.column(name), pa.float32())  # nulls stay nulls; to_numpy turns them into NaN
        matrix[:, j] = column.to_numpy(zero_copy_only=False)
    return matrix


def predict_minutes(df, model: NativeModel, keep: list[str], log_scale: bool = False, interval=None):
    """Spark DataFrame with MODEL_FEATURES -> ``keep`` columns + ``predicted_duration_min``, in Arrow batches.

    One predictor per Python worker process (built on its first batch, reused by its later tasks), predicting
    whole Arrow batches in place: no per-row UDF and no pandas conversion; the ``keep`` columns pass through the
    Python worker untouched (zero copy).
    ``log_scale`` returns the raw log1p-scale prediction instead (the margin a continued booster starts from).
    ``interval`` (a :class:`jobs.training.intervals.IntervalModel`) adds its bounds in minutes in the same pass.
    """
    import numpy as np
    import pyarrow as pa
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    extra = list(interval.columns) if interval is not None else []
    names = [*keep, PREDICTION, *extra]
    out_schema = T.StructType([*[df.schema[c] for c in keep],
                               *[T.StructField(c, T.DoubleType()) for c in (PREDICTION, *extra)]])  # fmt: skip

    def predict_batches(batches):
        predict = cached_predictor(model)
        bounds = [cached_predictor(m) for m in (interval.lower, interval.upper)] if interval is not None else []
        for batch in batches:
            matrix = arrow_feature_matrix(batch)
            raw = predict(matrix)
            minutes = raw if log_scale else np.clip(np.expm1(raw), 0.0, None)
            arrays = [minutes]
            if bounds:
                q_lo, q_hi = (bound(matrix) for bound in bounds)
                arrays += interval.bounds(minutes, q_lo, q_hi)
            columns = [batch.column(c) for c in keep] + [pa.array(a, type=pa.float64()) for a in arrays]
            yield pa.RecordBatch.from_arrays(columns, names=names)

    cols = list(dict.fromkeys([*keep, *MODEL_FEATURES]))
    return df.select(*[F.col(c) for c in cols]).mapInArrow(predict_batches, out_schema)


def metric_exprs(pred: str = PREDICTION, label: str = TARGET, where=None, prefix: str = "") -> list:
    """Aggregate expressions for RMSE, MAE, RMSLE (minutes), bias and n, optionally over the rows where ``where``.

    Plain aggregates, so they work in ``agg`` and in ``DataFrame.observe`` (computed during a write, no extra pass).
    """
    from pyspark.sql import functions as F

    def only(e):
        return e if where is None else F.when(where, e)

    err = F.col(pred) - F.col(label)
    log_err = F.log1p(F.greatest(F.col(pred), F.lit(0.0))) - F.log1p(F.col(label))
    return [
        F.sqrt(F.avg(only(err * err))).alias(f"{prefix}rmse"),
        F.avg(only(F.abs(err))).alias(f"{prefix}mae"),
        F.sqrt(F.avg(only(log_err * log_err))).alias(f"{prefix}rmsle"),
        F.avg(only(err)).alias(f"{prefix}bias"),
        F.count(only(F.lit(1))).alias(f"{prefix}n"),
    ]


def regression_metrics(df, pred: str = PREDICTION, label: str = TARGET, by: str | None = None) -> dict[str, float]:
    """RMSE, MAE, RMSLE (minutes) and bias, overall or per group of ``by``; computed in Spark."""
    return aggregate(df, metric_exprs(pred, label), by)


def aggregate(df, aggs: list, by: str | None = None) -> dict[str, float]:
    """Named aggregates over ``df``: {name: value}, or per group of ``by`` {name_<by>_<group>: value}."""
    if by is None:
        row = df.agg(*aggs).first().asDict()
        return {k: float(v) for k, v in row.items() if v is not None}
    out = {}
    for row in df.groupBy(by).agg(*aggs).collect():
        d = row.asDict()
        key = str(d.pop(by)).replace(" ", "_").replace("/", "_")
        out.update({f"{k}_{by}_{key}": float(v) for k, v in d.items() if v is not None})
    return out


def with_bands(df):
    """``hour_band`` from ``pickup_hour`` and, where ``trip_distance`` is present, ``distance_band`` (miles)."""
    from pyspark.sql import functions as F

    def banded(frame, column: str, bands, name: str):
        expr = F.lit(None).cast("string")
        for label, lo, hi in bands:
            inside = F.col(column) >= lo if hi is None else (F.col(column) >= lo) & (F.col(column) < hi)
            expr = F.when(inside, F.lit(label)).otherwise(expr)
        return frame.withColumn(name, expr)

    df = banded(df, "pickup_hour", HOUR_BANDS, "hour_band")
    return banded(df, "trip_distance", DISTANCE_BANDS, "distance_band") if "trip_distance" in df.columns else df


def full_metrics(predictions) -> dict[str, float]:
    """Overall metrics plus RMSE/MAE per pickup borough, hour band and (with ``trip_distance``) distance band.

    One aggregation over the predictions: each row is counted once overall and once in each of its groups.
    """
    from pyspark.sql import functions as F

    pred = with_bands(predictions)
    dims = [d for d in ("pu_borough", "hour_band", "distance_band") if d in pred.columns]
    keys = [F.struct(F.lit("").alias("dim"), F.lit("").alias("grp"))]
    keys += [F.struct(F.lit(d).alias("dim"), F.col(d).cast("string").alias("grp")) for d in dims]
    exploded = pred.select("*", F.explode(F.array(*keys)).alias("_key"))
    rows = exploded.groupBy("_key.dim", "_key.grp").agg(*metric_exprs()).collect()
    metrics: dict[str, float] = {}
    for row in rows:
        d = row.asDict()
        dim, grp = d.pop("dim"), d.pop("grp")
        if dim == "":
            metrics.update({k: float(v) for k, v in d.items() if v is not None})
            continue
        key = str(grp).replace(" ", "_").replace("/", "_")
        metrics.update({f"{k}_{dim}_{key}": float(v) for k, v in d.items()
                        if v is not None and k in ("rmse", "mae", "n")})  # fmt: skip
    return metrics


# ---------------------------------------------------------------------------------------------------------------
# MLflow
# ---------------------------------------------------------------------------------------------------------------
def setup_mlflow(settings: Settings):
    """Point MLflow at the configured store; fail clearly after bounded retries if it cannot be reached.

    Tries ``mlflow.connect_retries`` times, pausing ``connect_backoff_s`` (doubled each time) in between.
    """
    import os

    import mlflow

    # Bound MLflow's own HTTP retries (its default backs off for minutes) so an outage fails fast and clearly.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    if settings.mlflow.tracking_uri is None:  # the embedded sqlite store and its artifacts live in the lakehouse
        settings.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
    uri = settings.tracking_uri
    retries, backoff_s = settings.mlflow.connect_retries, settings.mlflow.connect_backoff_s
    last: Exception | None = None
    for attempt in range(retries):
        try:
            # Probe with a private client: global MLflow state changes only once the store answers.
            mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments(max_results=1)
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            return mlflow
        except Exception as e:  # connection refused, DNS, 5xx...
            last = e
            if attempt < retries - 1:
                time.sleep(backoff_s * (2**attempt))
    raise ServiceUnavailable(f"MLflow tracking server {uri} unreachable after {retries} tries: {last}")


def experiment_id(settings: Settings, name: str) -> str:
    """Create the experiment on first use with its artifacts under the lakehouse (never ./mlruns)."""
    import mlflow

    full = settings.experiment(name)
    exp = mlflow.get_experiment_by_name(full)
    if exp is not None:
        return exp.experiment_id
    location = settings.mlflow_artifacts.as_uri() + f"/{full}" if settings.mlflow.tracking_uri is None else None
    return mlflow.create_experiment(full, artifact_location=location)


def load_registered(settings: Settings, service: str, alias: str | None = None, version: int | None = None):
    """(NativeModel, ModelVersion) from the registry by alias or version number: never from a local path."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    name = settings.registered_model(service)
    try:
        mv = client.get_model_version(name, str(version)) if version else client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        what = f"version {version}" if version else f"alias '{alias}'"
        raise MissingUpstream(
            f"no registered model {name} with {what}: run `taxi train --service {service} --until YYYY-MM` first"
        ) from e
    return load_model(f"models:/{name}/{mv.version}", mv.tags.get("flavor")), mv
