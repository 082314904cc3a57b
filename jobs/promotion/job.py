"""Promote: move the ``champion`` alias to a registered version, or roll it back to the previous champion,
without retraining. Training's gate and this job share :func:`jobs.models.registry.gate_report`; the report is logged to
MLflow (experiment ``promote-<service>``) either way, and the alias moves because a person asked for it.

With ``train.promote_after_shadow_weeks`` set, a version is promoted only after it beat the champion in shadow
(``taxi shadow``) in each of that many latest monitored weeks. The comparison uses the newest feature month that
neither version has seen when one exists (both models are re-scored on it); otherwise each version's recorded
validation RMSE, and the report says they come from different months.
"""

from __future__ import annotations

from typing import Any

from jobs.models import registry
from jobs.models.inputs import TARGET
from jobs.models.metrics import regression_metrics
from jobs.models.prediction import predict_minutes
from jobs.models.registry import load_registered
from jobs.monitoring.shadow_compare import weeks_won
from jobs.platform import lakehouse, sql
from jobs.platform.config import Settings
from jobs.platform.context import RunContext
from jobs.platform.errors import InputError
from jobs.platform.tracking import experiment_id, setup_mlflow


def unseen_month(spark, settings: Settings, service: str, versions) -> str | None:
    """The newest month with features after every version's training window, if any."""
    seen = max((registry.trained_through(v) or "9999-99") for v in versions)
    row = (
        lakehouse.read(spark, settings, lakehouse.FEATURES)
        .where(lakehouse.partition_predicate(service))
        .where(sql.after("month", seen))
        .agg({"month": "max"})
        .first()
    )
    return row[0] if row else None


def rmse_on(spark, settings: Settings, service: str, mv, month: str) -> float:
    model, _ = load_registered(settings, service, version=int(mv.version))
    rows = lakehouse.read_partition(spark, settings, lakehouse.FEATURES, service, month).where("in_training_range")
    return regression_metrics(predict_minutes(rows, model, [TARGET]))["rmse"]


def comparison(spark, settings: Settings, service: str, target, current) -> dict[str, Any]:
    def side(mv, rmse):
        return {"version": int(mv.version), "rmse": rmse, "trained_through": registry.trained_through(mv)}

    month = unseen_month(spark, settings, service, [target, current])
    if month:
        return registry.gate_report(
            settings,
            side(target, rmse_on(spark, settings, service, target, month)),
            side(current, rmse_on(spark, settings, service, current, month)),
            month,
            "newest month with features: unseen by both versions",
        )
    return registry.gate_report(
        settings,
        side(target, registry.validation_rmse(target)),
        side(current, registry.validation_rmse(current)),
        f"{target.tags.get('valid_month')} vs {current.tags.get('valid_month')}",
        "each version's recorded validation RMSE (different months: no month with features is unseen by both yet)",
    )


def require_shadow_wins(settings: Settings, service: str, version: int, weeks: int) -> None:
    """Refuse a promotion the shadow weeks do not support (train.promote_after_shadow_weeks > 0)."""
    rows = None
    if lakehouse.exists(settings, lakehouse.DRIFT):
        only = [("service", "=", service), ("feature", "=", "_shadow")]
        rows = lakehouse.query(settings, lakehouse.DRIFT, ["week", "metric", "value"], only)
    if rows is None or rows.empty:
        raise InputError(
            f"{settings.registered_model(service)} v{version}: promotion needs {weeks} monitored weeks "
            f"of shadow wins (train.promote_after_shadow_weeks); no week ran a shadow yet: put it in "
            f"shadow with `taxi shadow --service {service} --version {version}`"
        )
    enough, why = weeks_won(rows, version, weeks)
    if not enough:
        raise InputError(f"{settings.registered_model(service)}: {why}")


def run(spark, settings: Settings, service: str, version: int | None = None, rollback: bool = False) -> dict:
    ctx = RunContext.start("promote", spark, settings, service, f"v{version}" if version else "rollback")
    log = ctx.log
    mlflow = setup_mlflow(settings)
    current = registry.champion(settings, service)
    if rollback:
        if current is None or not current.tags.get("previous_champion"):
            raise InputError(
                f"{settings.registered_model(service)}: the champion has no previous champion to roll back to"
            )
        version = int(current.tags["previous_champion"])
    target = registry.version(settings, service, version)
    action = "rollback" if rollback else "promote"
    if not rollback and settings.train.promote_after_shadow_weeks:
        require_shadow_wins(settings, service, int(target.version), settings.train.promote_after_shadow_weeks)
    if current is not None and str(current.version) == str(target.version):
        log.info("unchanged", reason=f"v{target.version} is already the champion")
        return {"action": action, "changed": False, "champion_version": int(target.version)}
    report = comparison(spark, settings, service, target, current) if current is not None else None
    exp = experiment_id(settings, f"promote-{service}")
    with mlflow.start_run(experiment_id=exp, run_name=f"{service}-{action}-v{target.version}") as run_:
        mlflow.log_params(
            {"action": action, "from_version": current.version if current else "none", "to_version": target.version}
        )
        if report:
            mlflow.log_dict(report, registry.GATE_REPORT)
    registry.set_champion(settings, service, target.version, current.version if current else None)
    log.info("done", action=action, champion=target.version, gate_passes=report["passes"] if report else None)
    return {
        "action": action,
        "changed": True,
        "from_version": int(current.version) if current else None,
        "champion_version": int(target.version),
        "gate_report": report,
        "mlflow_run_id": run_.info.run_id,
    }
