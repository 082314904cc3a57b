"""The MLflow model registry: the facts each model version carries as tags, the champion alias and its history,
gate reports, and the reference profile stored with a version.

Tags written at registration (what the gate and the monitor read; never the run tree):
``flavor``, ``candidate``, ``warm_start``, ``train_months``, ``valid_month``, ``trained_through`` (the last month
the registered model has seen: the validation month when it was refit on it), ``features_version``,
``val_rmse``/``val_mae``/``val_rmsle``/``val_bias``/``val_rmse_pu_borough_*`` (the pre-refit model on the
validation month: out-of-sample), ``training_run_id``, ``reference_profile`` (run id + artifact path).
The ``champion`` alias moves only through :func:`set_champion`, which records ``previous_champion`` on the new
version so that a rollback knows where to go. The ``challenger`` alias marks the version scored in shadow.
"""

from __future__ import annotations

from typing import Any

from jobs.models.flavors import load_model
from jobs.platform.config import Settings
from jobs.platform.errors import InputError, MissingUpstream

CHAMPION = "champion"
CHALLENGER = "challenger"  # the version scored in shadow beside the champion
GATE_REPORT = "gate_report.json"


def client():
    import mlflow

    return mlflow.MlflowClient()


def validation_tags(metrics: dict[str, float]) -> dict[str, str]:
    keep = ("rmse", "mae", "rmsle", "bias")
    return {f"val_{k}": f"{v:.4f}" for k, v in metrics.items() if k in keep or k.startswith("rmse_pu_borough_")}


def register(settings: Settings, service: str, model_uri: str, tags: dict[str, Any]):
    """Register ``model_uri`` as a new version of the service's model, with its facts as tags."""
    import contextlib
    import io
    import logging

    import mlflow

    name = settings.registered_model(service)
    printed = io.StringIO()
    with contextlib.redirect_stderr(printed):  # MLflow prints its notices ("Created version ...") to stderr
        mv = mlflow.register_model(model_uri, name)
    for line in printed.getvalue().splitlines():
        logging.getLogger("mlflow.register_model").info(line)
    c = client()
    for k, v in tags.items():
        c.set_model_version_tag(name, mv.version, k, str(v))
    return c.get_model_version(name, mv.version)


def champion(settings: Settings, service: str):
    """The champion's ModelVersion, or None before the first promotion."""
    return by_alias(settings, service, CHAMPION)


def challenger(settings: Settings, service: str):
    """The version in shadow (``taxi shadow``), or None."""
    return by_alias(settings, service, CHALLENGER)


def by_alias(settings: Settings, service: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version_by_alias(settings.registered_model(service), alias)
    except MlflowException:
        return None


def version(settings: Settings, service: str, number: int | str):
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version(settings.registered_model(service), str(number))
    except MlflowException as e:
        raise InputError(f"{settings.registered_model(service)} has no version {number}") from e


def versions(settings: Settings, service: str) -> list:
    """Every ModelVersion of the service's model (with its tags), oldest first; none before the first training."""
    from mlflow.exceptions import MlflowException

    name, c = settings.registered_model(service), client()
    try:
        found = c.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    return [c.get_model_version(name, mv.version) for mv in sorted(found, key=lambda mv: int(mv.version))]


def training_seconds(mv) -> float:
    """Wall time of the training run that registered ``mv`` (the parent of the run that logged its model)."""
    c = client()
    run = c.get_run(mv.run_id)
    parent = run.data.tags.get("mlflow.parentRunId")
    info = c.get_run(parent).info if parent else run.info
    return max(0.0, ((info.end_time or info.start_time) - info.start_time) / 1000)


def trained_through(mv) -> str | None:
    """The last month a registered version has seen (None for versions registered before this tag existed)."""
    return mv.tags.get("trained_through") if mv is not None else None


def validation_rmse(mv) -> float | None:
    value = mv.tags.get("val_rmse") if mv is not None else None
    return float(value) if value else None


def set_champion(settings: Settings, service: str, number: int | str, previous: int | str | None) -> None:
    name = settings.registered_model(service)
    c = client()
    if previous is not None and str(previous) != str(number):
        c.set_model_version_tag(name, str(number), "previous_champion", str(previous))
    c.set_registered_model_alias(name, CHAMPION, str(number))


def set_challenger(settings: Settings, service: str, number: int | str) -> None:
    """Score ``number`` in shadow beside the champion (alias ``challenger``)."""
    client().set_registered_model_alias(settings.registered_model(service), CHALLENGER, str(number))


def remove_challenger(settings: Settings, service: str) -> None:
    client().delete_registered_model_alias(settings.registered_model(service), CHALLENGER)


def record_gate(settings: Settings, service: str, number: int | str, passed: bool, reason: str) -> None:
    """The gate's outcome on the version it judged: ``gate`` promoted or rejected, and why it was rejected."""
    name, c = settings.registered_model(service), client()
    c.set_model_version_tag(name, str(number), "gate", "promoted" if passed else "rejected")
    if not passed:
        c.set_model_version_tag(name, str(number), "rejected_reason", reason)


def log_reference_profile(mlflow, profile: dict[str, Any]) -> str:
    """Log the profile in the active run; returns the value of the version's ``reference_profile`` tag."""
    from jobs.models.profile import ARTIFACT

    mlflow.log_dict(profile, ARTIFACT)
    return f"runs:/{mlflow.active_run().info.run_id}/{ARTIFACT}"


def load_reference_profile(mv) -> dict[str, Any]:
    import mlflow

    uri = mv.tags.get("reference_profile")
    if not uri:
        raise MissingUpstream(
            f"model {mv.name} version {mv.version} has no reference profile (registered before profiles were "
            "stored): retrain with `taxi train`, or monitor weeks scored by a newer version"
        )
    return mlflow.artifacts.load_dict(uri)


def gate_decision(
    candidate_rmse: float,
    champion_rmse: float | None,
    margin: float,
    champion_version: str | int | None = None,
    valid_month: str = "",
) -> tuple[bool, str]:
    """(promote?, reason): the first model is promoted; later ones only if strictly better by ``margin`` minutes."""
    if champion_rmse is None:
        return True, "first model"
    if candidate_rmse < champion_rmse - margin:
        return True, f"rmse {candidate_rmse:.4f} < champion {champion_rmse:.4f} - {margin}"
    return False, (
        f"rmse {candidate_rmse:.4f} does not beat champion v{champion_version} ({champion_rmse:.4f}) "
        f"by margin {margin} on {valid_month}"
    )


def gate_report(
    settings: Settings, candidate: dict[str, Any], champion: dict[str, Any] | None, month: str, basis: str
) -> dict[str, Any]:
    """The comparison a promotion rests on; logged as ``gate_report.json`` by training and by ``taxi promote``.

    ``candidate``/``champion``: {"version", "rmse", "trained_through"}; ``basis`` says what ``month`` is to both.
    """
    promoted, reason = gate_decision(
        candidate["rmse"],
        champion["rmse"] if champion else None,
        settings.train.margin,
        champion["version"] if champion else None,
        month,
    )
    return {
        "month": month,
        "basis": basis,
        "margin": settings.train.margin,
        "candidate": candidate,
        "champion": champion,
        "passes": promoted,
        "reason": reason,
    }


def load_registered(settings: Settings, service: str, alias: str | None = None, version: int | None = None):
    """(NativeModel, ModelVersion) from the registry by alias or version number: never from a local path."""
    from mlflow.exceptions import MlflowException

    name, c = settings.registered_model(service), client()
    try:
        mv = c.get_model_version(name, str(version)) if version else c.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        what = f"version {version}" if version else f"alias '{alias}'"
        raise MissingUpstream(
            f"no registered model {name} with {what}: run `taxi train --service {service} --until YYYY-MM` first"
        ) from e
    return load_model(f"models:/{name}/{mv.version}", mv.tags.get("flavor")), mv
