"""Registering a training run's best model: its reference profile for the monitor, its refit on the validation
month, its interval model, its facts as tags, and the gate that moves the champion alias only if it wins."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from jobs.models import compiled, registry
from jobs.models.inputs import MODEL_FEATURES
from jobs.models.prediction import predict_minutes
from jobs.models.profile import PROFILE_COLUMNS, build_profile
from jobs.platform.context import RunContext
from jobs.training.candidates import Bakeoff
from jobs.training.intervals import train_interval
from jobs.training.selection import gate, refit


def register_best(ctx: RunContext, bake: Bakeoff, champion, champion_mv):
    """(best candidate, gate decision, interval tags): the best model's reference profile, its refit, the interval
    model, and the gate that registers it and moves the champion alias only if it wins."""
    settings, data, mlflow = ctx.settings, bake.data, bake.mlflow
    models = [c for c in bake.candidates if c.model is not None]
    if not models:
        raise ValueError("train.learners is empty and there is no champion to warm-start: nothing to train")
    best = min(models, key=lambda c: c.rmse)
    # The monitoring reference: the validation month as the chosen model predicted it before any refit.
    profile = build_profile(
        predict_minutes(data.valid_all, best.model, PROFILE_COLUMNS),
        data.valid_month,
        settings.monitor.bins,
        settings.monitor.slices,
    )
    profile_uri = registry.log_reference_profile(mlflow, profile)
    cfg = settings.train
    registered = (
        refit(ctx.spark, mlflow, settings, best, bake.valid, bake.workers, champion, ctx.log) if cfg.refit else best
    )
    interval = None
    if cfg.intervals.enabled:  # calibrated on the validation month, which the quantile models never saw
        interval = train_interval(mlflow, bake.train, bake.valid, settings, bake.workers, data.valid_month, ctx.log)
    interval_tags = interval.tags if interval is not None else {}
    tags = {
        "flavor": best.model.flavor,
        "candidate": registered.name,
        "warm_start": best.warm_start,
        "train_months": ",".join(data.train_months),
        "valid_month": data.valid_month,
        "trained_through": data.valid_month if cfg.refit else data.train_months[-1],
        "features_version": data.features_version,
        "target_transform": "log1p",
        "features": ",".join(MODEL_FEATURES),
        "training_run_id": best.run_id,
        "reference_profile": profile_uri,
        **registry.validation_tags(best.metrics),
        **interval_tags,
        **(compile_trees(mlflow, registered.model, interval, ctx.log) if cfg.compile_trees else {}),
    }
    decision = gate(
        mlflow, settings, ctx.service, registered, tags, (champion, champion_mv), bake.valid, data.valid_month
    )
    return best, decision, interval_tags


def compile_trees(mlflow, model, interval, log) -> dict[str, str]:
    """The version's LightGBM boosters compiled (:mod:`jobs.models.compiled`) and logged under ``compiled/`` in the
    active run; the tags that point scoring at them."""
    started = time.monotonic()
    libraries = compiled.compile_version(model, interval)
    if not libraries:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        compiled.write_version(Path(tmp), libraries)
        mlflow.log_artifacts(tmp, compiled.ARTIFACT_DIR)
    log.info(
        "compiled trees",
        boosters=len(libraries),
        platform=compiled.host_platform(),
        mib=round(sum(len(b) for b in libraries.values()) / 2**20, 1),
        compile_s=round(time.monotonic() - started, 1),
    )
    return {
        "compiled_trees": f"{mlflow.get_artifact_uri()}/{compiled.ARTIFACT_DIR}",
        "compiled_platform": compiled.host_platform(),
    }
