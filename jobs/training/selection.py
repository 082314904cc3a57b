"""Choosing what to register: the refit of the best candidate and the registry gate against the champion."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from jobs.models import registry
from jobs.models.flavors import NativeModel
from jobs.models.inputs import MODEL_FEATURES, TARGET
from jobs.models.metrics import regression_metrics
from jobs.models.prediction import predict_minutes
from jobs.platform.config import Settings
from jobs.training.artifacts import log_native_model
from jobs.training.learners import fit_model

KEEP = ["trip_id", "pu_borough", "pickup_hour", "trip_distance", TARGET]


@dataclass
class Candidate:
    name: str
    learner: str  # xgboost | lightgbm | deep | ensemble | baseline
    metrics: dict[str, float]
    fit_seconds: float
    run_id: str
    model: NativeModel | None = None
    model_uri: str | None = None
    warm_start: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    train_tasks: int = 0
    train_data: Any = None  # the rows it was fitted on (a refit adds the validation month to them)
    members: list[Candidate] = field(default_factory=list)  # an ensemble's member candidates
    fit_info: dict[str, Any] = field(default_factory=dict)  # what the fit reports (the network's sample, epochs)

    @property
    def rmse(self) -> float:
        return self.metrics["rmse"]


ENSEMBLE = "ensemble-mean"


def ensemble_members(candidates: list[Candidate], learners=("xgboost", "lightgbm")) -> list[Candidate]:
    """The ensemble's members: the best candidate (validation RMSE) of each learner in ``learners``, when there are
    two or more. It enters the gate like the others and is registered only if it wins."""
    best: dict[str, Candidate] = {}
    for c in candidates:
        if c.learner in learners and c.model is not None and (c.learner not in best or c.rmse < best[c.learner].rmse):
            best[c.learner] = c
    return [best[k] for k in learners if k in best] if len(best) >= 2 else []


def refit(spark, mlflow, settings: Settings, best: Candidate, valid, workers: int, champion, log) -> Candidate:
    """Refit the chosen learner on its training rows + the validation month (the model to register).

    Its validation metrics stay those of the pre-refit fit: the refit model has seen the validation month. An
    ensemble refits each member and averages them again.
    """
    t = time.monotonic()
    models = [
        fit_model(
            settings, m.learner, m.train_data.unionByName(valid), m.params, workers, champion if m.warm_start else None
        )[0]
        for m in best.members or [best]
    ]
    model = NativeModel.ensemble(models) if best.members else models[0]
    seconds = time.monotonic() - t
    with mlflow.start_run(run_name=f"{best.name}-refit", nested=True) as child:
        mlflow.set_tags({"learner": best.learner, "refit_of": best.run_id, "warm_start": best.warm_start})
        mlflow.log_params({f"hp_{k}": v for k, v in best.params.items()})
        if best.members:
            mlflow.set_tag("members", ",".join(m.name for m in best.members))
        mlflow.log_metrics({**{f"prerefit_{k}": v for k, v in best.metrics.items()}, "fit_seconds": seconds})
        uri = log_native_model(mlflow, model, valid.select(*MODEL_FEATURES).limit(5).toPandas())
    log.info("refit", name=best.name, fit_s=round(seconds, 1))
    return Candidate(
        f"{best.name}-refit",
        best.learner,
        best.metrics,
        seconds,
        child.info.run_id,
        model,
        uri,
        best.warm_start,
        best.params,
    )


def gate(
    mlflow,
    settings: Settings,
    service: str,
    best: Candidate,
    tags: dict[str, Any],
    champion_now: tuple,
    valid,
    valid_month: str,
) -> dict[str, Any]:
    """Register the best learner; give it the champion alias only if it beats the champion by the margin.

    ``champion_now``: (the champion's model, its ModelVersion), both None before the first promotion."""
    champion, champion_mv = champion_now
    champion_rmse = None
    if champion is not None:
        champion_rmse = regression_metrics(predict_minutes(valid, champion, KEEP))["rmse"]
    mv = registry.register(settings, service, best.model_uri, tags)
    seen = registry.trained_through(champion_mv)
    report = registry.gate_report(
        settings,
        {"version": int(mv.version), "rmse": best.rmse, "trained_through": tags["trained_through"]},
        {"version": int(champion_mv.version), "rmse": champion_rmse, "trained_through": seen} if champion else None,
        valid_month,
        "validation month: unseen by the candidate and the champion"
        if champion is None or (seen or "") < valid_month
        else "validation month: seen by the champion (--force)",
    )
    mlflow.log_dict(report, registry.GATE_REPORT)
    name = settings.registered_model(service)
    if report["passes"]:
        registry.set_champion(settings, service, mv.version, champion_mv.version if champion_mv else None)
    registry.record_gate(settings, service, mv.version, report["passes"], report["reason"])
    return {
        "registered_model": name,
        "registered_version": int(mv.version),
        "best_candidate": best.name,
        "best_rmse": round(best.rmse, 4),
        "champion_rmse_before": round(champion_rmse, 4) if champion_rmse is not None else None,
        "promoted": report["passes"],
        "gate_reason": report["reason"],
        "champion_version": int(mv.version) if report["passes"] else int(champion_mv.version),
    }
