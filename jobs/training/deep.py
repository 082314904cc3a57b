"""The deep tabular challenger: a Wide & Deep network (Keras 3 on the JAX CPU backend, the ``[deep]`` extra).

It takes the same float32 matrix of ``MODEL_FEATURES`` as the boosters (nulls as NaN) and predicts ``log1p(minutes)``,
so it is logged in its native MLflow flavour (``mlflow.keras``) and scores through the same Arrow path. The
preprocessing lives inside the network (serialisable layers below): category codes become embedding indices (NaN
and unseen values share index 0), numbers are log-scaled where skewed and standardised with the training sample's
statistics, with a missing indicator each.

- wide: one learned weight per pickup x dropoff zone pair plus a linear term on the numbers;
- deep: zone, borough, service-zone and calendar embeddings and the numbers through a ReLU MLP.

No well-kept tool trains a Keras network distributed on Spark 3.5 today, so it trains on the driver from a bounded,
uniformly sampled subset of the training rows (``train.deep.max_rows``) and stops early on a random holdout of that
sample, never on the validation month.
"""

from __future__ import annotations

import time

from jobs.models.flavors import NativeModel
from jobs.models.inputs import MODEL_FEATURES, TARGET
from jobs.models.keras_network import _LAYERS, keras
from jobs.platform.config import DeepConfig

ZONES = 266  # TLC zone ids 1..265 (264/265 unknown)
# (column, distinct codes the embedding has room for, width as a share of train.deep.zone_embedding)
CATEGORIES = [
    ("PULocationID", ZONES, 1.0),
    ("DOLocationID", ZONES, 1.0),
    ("pu_borough_code", 12, 0.25),
    ("do_borough_code", 12, 0.25),
    ("pu_service_zone_code", 8, 0.25),
    ("do_service_zone_code", 8, 0.25),
    ("pickup_hour", 24, 0.25),
    ("day_of_week", 8, 0.25),
    ("hour_of_week", 168, 0.5),
    ("VendorID", 8, 0.125),
    ("RatecodeID", 8, 0.125),
    ("trip_type", 4, 0.125),
    ("hist_level", 8, 0.125),
]
# Heavy-tailed numbers enter as log1p(max(x, 0)).
LOG_SCALED = {
    "trip_distance",
    "centroid_distance_km",
    "hist_median_duration_min",
    "hist_median_speed_mph",
    "hist_trip_count",
}
NUMBERS = [c for c in MODEL_FEATURES if c not in {name for name, _, _ in CATEGORIES}]


def number_statistics(matrix):
    """(columns, logged, mean, std) of the numeric features over ``matrix`` (NaN ignored; std 1 when constant)."""
    import numpy as np

    columns = [MODEL_FEATURES.index(c) for c in NUMBERS]
    logged = [c in LOG_SCALED for c in NUMBERS]
    v = matrix[:, columns].astype("float64")
    v = np.where(np.array(logged), np.log1p(np.maximum(v, 0.0)), v)
    mean = np.nan_to_num(np.nanmean(v, axis=0))
    std = np.nan_to_num(np.nanstd(v, axis=0), nan=1.0)
    std = np.where(std > 1e-6, std, 1.0)
    return columns, logged, [float(m) for m in mean], [float(s) for s in std]


def build(cfg: DeepConfig, matrix, target_mean: float):
    """The Wide & Deep network over the feature matrix; the output bias starts at the training target's mean."""
    k = keras()
    layers = k.layers
    x = k.Input(shape=(len(MODEL_FEATURES),), dtype="float32", name="features")
    numbers = _LAYERS["Standardize"](*number_statistics(matrix), name="numbers")(x)
    index = {
        name: _LAYERS["CategoryIndex"](MODEL_FEATURES.index(name), size, name=f"{name}_index")(x)
        for name, size, _ in CATEGORIES
    }
    embedded = [
        layers.Flatten()(
            layers.Embedding(size + 1, max(2, round(cfg.zone_embedding * share)), name=f"{name}_emb")(index[name])
        )
        for name, size, share in CATEGORIES
    ]
    deep = layers.Concatenate()([numbers, *embedded])
    for width in cfg.hidden:
        deep = layers.Dense(width, activation="relu")(deep)
        if cfg.dropout:
            deep = layers.Dropout(cfg.dropout)(deep)
    deep = layers.Dense(1, name="deep")(deep)
    pair = _LAYERS["ZonePair"](ZONES, name="zone_pair")(index["PULocationID"], index["DOLocationID"])
    wide_pair = layers.Flatten()(
        layers.Embedding((ZONES + 1) ** 2, 1, embeddings_initializer="zeros", name="zone_pair_weight")(pair)
    )
    wide_numbers = layers.Dense(1, name="wide_numbers")(numbers)
    out = layers.Add()([deep, wide_pair, wide_numbers])
    out = layers.Dense(
        1,
        kernel_initializer="ones",
        bias_initializer=k.initializers.Constant(target_mean),
        trainable=True,
        name="log_minutes",
    )(out)
    return k.Model(x, layers.Reshape(())(out), name="wide_and_deep")


def sample_rows(rows, max_rows: int, seed: int):
    """A uniform sample of at most ``max_rows`` training rows, collected to the driver as (matrix, log1p target)."""
    import numpy as np

    from jobs.models.prediction import feature_matrix

    total = rows.count()
    if total > max_rows:
        rows = rows.sample(fraction=min(1.0, 1.05 * max_rows / total), seed=seed).limit(max_rows)
    pdf = rows.select(*MODEL_FEATURES, TARGET).toPandas()
    return feature_matrix(pdf), np.log1p(pdf[TARGET].to_numpy(dtype="float64")).astype("float32"), total


def fit_deep(rows, cfg: DeepConfig, seed: int) -> tuple[NativeModel, dict]:
    """Train the network on a bounded sample of ``rows``; returns the model and what the fit did."""
    import numpy as np

    k = keras()
    k.utils.set_random_seed(seed)
    started = time.monotonic()
    matrix, target, total = sample_rows(rows, cfg.max_rows, seed)
    if len(matrix) < 100:
        raise ValueError(f"the deep learner needs at least 100 training rows; the window has {len(matrix)}")
    holdout = np.random.default_rng(seed).random(len(matrix)) < cfg.holdout_fraction
    network = build(cfg, matrix[~holdout], float(target[~holdout].mean()))
    network.compile(optimizer=k.optimizers.Adam(cfg.learning_rate), loss="mse")
    stop = k.callbacks.EarlyStopping(patience=cfg.patience, restore_best_weights=True)
    history = network.fit(
        matrix[~holdout],
        target[~holdout],
        validation_data=(matrix[holdout], target[holdout]),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        callbacks=[stop],
        verbose=0,
    )
    losses = history.history["val_loss"]
    info = {
        "sample_rows": int(len(matrix)),
        "window_rows": int(total),
        "epochs_run": len(losses),
        "best_epoch": int(np.argmin(losses)) + 1,
        "holdout_rmse_log": float(np.sqrt(min(losses))),
        "params": int(network.count_params()),
        "fit_seconds": time.monotonic() - started,
    }
    return NativeModel.from_keras(network), info
