"""Keras for the deep challenger: the JAX backend chosen before the first import, and the network's serialisable
preprocessing layers, registered so that a saved network loads anywhere (scoring needs them, training builds with
them; the architecture itself is :mod:`jobs.training.deep`)."""

from __future__ import annotations

import os

from jobs.platform.errors import InputError


def keras():
    """Keras on the JAX backend (chosen before the first import: Keras reads it once)."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import keras as k
    except ImportError as e:
        raise InputError(
            f"train.learners includes deep, which needs the [deep] extra (Keras 3 + JAX): pip install -e '.[deep]'; {e}"
        ) from e
    _register(k)
    return k


_LAYERS: dict = {}


def _register(k) -> None:
    """Define the preprocessing layers once, registered so that a saved network loads anywhere."""
    if _LAYERS:
        return
    ops = k.ops

    @k.saving.register_keras_serializable(package="taxi")
    class CategoryIndex(k.layers.Layer):
        """Column ``column`` of the matrix as an embedding index: code + 1 within ``size``, 0 for NaN/out of range."""

        def __init__(self, column: int, size: int, **kwargs):
            super().__init__(**kwargs)
            self.column, self.size = column, size

        def call(self, x):
            v = x[:, self.column]
            inside = ops.logical_and(v >= 0, v < self.size)
            return ops.cast(ops.where(inside, v + 1, ops.zeros_like(v)), "int32")

        def get_config(self):
            return {**super().get_config(), "column": self.column, "size": self.size}

    @k.saving.register_keras_serializable(package="taxi")
    class ZonePair(k.layers.Layer):
        """One index per (pickup, dropoff) pair of embedding indices."""

        def __init__(self, size: int, **kwargs):
            super().__init__(**kwargs)
            self.size = size

        def call(self, pu, do):
            return pu * (self.size + 1) + do

        def get_config(self):
            return {**super().get_config(), "size": self.size}

    @k.saving.register_keras_serializable(package="taxi")
    class Standardize(k.layers.Layer):
        """Columns ``columns`` (log1p where ``logged``) standardised with fixed statistics, plus missing flags."""

        def __init__(self, columns: list[int], logged: list[bool], mean: list[float], std: list[float], **kwargs):
            super().__init__(**kwargs)
            self.columns, self.logged, self.mean, self.std = columns, logged, mean, std

        def call(self, x):
            v = ops.take(x, self.columns, axis=1)
            missing = ops.isnan(v)
            v = ops.where(ops.array(self.logged), ops.log1p(ops.maximum(v, 0.0)), v)
            z = ops.clip((v - ops.array(self.mean)) / ops.array(self.std), -6.0, 6.0)
            return ops.concatenate([ops.where(missing, ops.zeros_like(z), z), ops.cast(missing, z.dtype)], axis=1)

        def get_config(self):
            return {
                **super().get_config(),
                "columns": self.columns,
                "logged": self.logged,
                "mean": self.mean,
                "std": self.std,
            }

    _LAYERS.update(CategoryIndex=CategoryIndex, ZonePair=ZonePair, Standardize=Standardize)
