"""The champion and the challenger in shadow (``taxi shadow``), compared on the same trips of a week."""

from __future__ import annotations

from typing import Any

from jobs.models.profile import accuracy


def scoring_version(scored) -> int:
    """The model version that scored most of the rows (a promotion mid-week leaves two)."""
    row = scored.groupBy("model_version").count().orderBy("count", ascending=False).first()
    return int(row["model_version"])


def compare(champion_week, challenger_week) -> dict[str, Any] | None:
    """Accuracy (and interval coverage) of both models over the trips both scored, or None without shadow rows.

    ``challenger_week``: the week's ``gold/shadow_predictions`` rows joined with their features, like
    ``champion_week``. ``challenger_wins``: a strictly lower RMSE on those trips."""
    if challenger_week.limit(1).count() == 0:
        return None
    both = champion_week.select("trip_id").join(challenger_week.select("trip_id"), "trip_id")
    champion = accuracy(champion_week.join(both, "trip_id"))
    challenger = accuracy(challenger_week.join(both, "trip_id"))
    wins = None
    if champion.get("rmse") is not None and challenger.get("rmse") is not None:
        wins = challenger["rmse"] < champion["rmse"]
    return {
        "challenger_version": scoring_version(challenger_week),
        "known_rows": int(challenger.get("n", 0)),
        "champion": {k: v for k, v in champion.items() if not k.startswith("n")},
        "challenger": {k: v for k, v in challenger.items() if not k.startswith("n")},
        "challenger_wins": wins,
    }


def records(shadow: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Drift-table records of a comparison: feature ``_shadow``, metric ``<side>_<metric>``."""
    if shadow is None:
        return []
    facts = {
        "shadow_challenger_version": shadow["challenger_version"],
        "shadow_challenger_wins": float("nan") if shadow["challenger_wins"] is None else shadow["challenger_wins"],
    }
    return [{"feature": "_shadow", "metric": name, "value": float(value)} for name, value in facts.items()] + [
        {"feature": "_shadow", "metric": f"shadow_{side}_{name}", "value": value}
        for side in ("champion", "challenger")
        for name, value in shadow[side].items()
    ]


def weeks_won(drift_rows, version: int, weeks: int) -> tuple[bool, str]:
    """(enough?, why) from the drift table's ``_shadow`` rows of one service (pandas: week, metric, value): did
    ``version`` beat the champion in shadow in each of the latest ``weeks`` weeks that ran a shadow?"""
    facts = drift_rows[drift_rows.metric.isin(["shadow_challenger_version", "shadow_challenger_wins"])]
    table = facts.pivot_table(index="week", columns="metric", values="value", aggfunc="last").sort_index()
    latest = table.tail(weeks)
    won = [
        w
        for w, r in latest.iterrows()
        if r.get("shadow_challenger_version") == version and r.get("shadow_challenger_wins") == 1.0
    ]
    if len(latest) == weeks and len(won) == weeks:
        return True, f"v{version} won in shadow in each of the latest {weeks} weeks ({', '.join(won)})"
    shown = ", ".join(
        f"{w}: v{r.get('shadow_challenger_version', float('nan')):.0f} "
        f"{'won' if r.get('shadow_challenger_wins') == 1.0 else 'lost'}"
        for w, r in latest.iterrows()
    )
    return False, (
        f"v{version} must win in shadow in each of the latest {weeks} monitored weeks "
        f"(train.promote_after_shadow_weeks); found {shown or 'no shadow weeks'}: put it in shadow with "
        f"`taxi shadow --version {version}` and monitor more weeks"
    )
