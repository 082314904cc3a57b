"""Vectorised prediction: any model flavour over a Spark DataFrame's feature columns, in Arrow batches.

Models are logged to MLflow in their native flavour (:mod:`jobs.models.flavors`: xgboost/lightgbm Boosters trained
on Spark, the Keras challenger, the ensemble pyfunc), so the scoring job needs neither the training code nor the JVM
learners: it predicts in place over Arrow batches in ``mapInArrow``. The target is learned on a log scale (``log1p``
minutes); :func:`predict_minutes` returns minutes.
"""

from __future__ import annotations

from jobs.models.flavors import NativeModel, cached_predictor
from jobs.models.inputs import MODEL_FEATURES, PREDICTION


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
    ``interval`` (a :class:`jobs.models.interval.IntervalModel`) adds its bounds in minutes in the same pass.
    """
    import numpy as np
    import pyarrow as pa
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    extra = list(interval.columns) if interval is not None else []
    names = [*keep, PREDICTION, *extra]
    out_schema = T.StructType(
        [*[df.schema[c] for c in keep], *[T.StructField(c, T.DoubleType()) for c in (PREDICTION, *extra)]]
    )

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
