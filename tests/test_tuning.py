"""`taxi train --tune`: the search space, early stopping on a month before the validation month, trials as nested
MLflow runs spread over both task slots, the tuned candidate in the gate, and the bake-off report."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest

from jobs.platform.config import ConfigError, load_settings
from jobs.platform.errors import InputError
from jobs.training import bakeoff, tuning
from jobs.training import job as train


# ---- unit --------------------------------------------------------------------------------------------------------
@pytest.mark.unit
def test_each_trial_draws_every_parameter_inside_its_range_and_type():
    import optuna

    space = load_settings().train.tune.space
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=1))
    for learner in ("xgboost", "lightgbm"):
        for _ in range(20):
            values = tuning.suggest(study.ask(), space[learner])
            assert set(values) == set(space[learner])
            for name, dim in space[learner].items():
                assert dim.low <= values[name] <= dim.high, (name, values[name])
                assert isinstance(values[name], int) == (dim.type == "int"), (name, values[name])


@pytest.mark.unit
@pytest.mark.parametrize(
    "key, value, message",
    [
        ("TAXI__TRAIN__TUNE__SPACE__xgboost__max_depth", "{type: int, low: 9, high: 4}", "low < high"),
        ("TAXI__TRAIN__TUNE__SPACE__xgboost__learning_rate", "{low: 0, high: 0.3, log: true}", "low > 0"),
        ("TAXI__TRAIN__TUNE__PARALLEL_TRIALS", "0", "parallel_trials"),
    ],
)
def test_a_bad_search_space_is_refused_naming_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(env={key: value})


@pytest.mark.unit
def test_the_rounds_kept_are_those_up_to_the_best_score_on_the_tuning_month():
    import lightgbm as lgb
    import xgboost as xgb

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = x[:, 0] + rng.normal(scale=2.0, size=400)  # noisy: the held-out score stops improving early
    train_set, valid_set = xgb.DMatrix(x[:300], y[:300]), xgb.DMatrix(x[300:], y[300:])
    booster = xgb.train(
        {"eta": 0.5, "max_depth": 6},
        train_set,
        200,
        evals=[(valid_set, "v")],
        early_stopping_rounds=5,
        verbose_eval=False,
    )
    best = int(booster.attributes()["best_iteration"])
    assert booster.num_boosted_rounds() == best + 1 + 5  # xgboost keeps the patience rounds after the best
    assert tuning.best_rounds(booster, "xgboost", 200, 5) == best + 1
    kept = tuning.truncated(booster, "xgboost", best + 1).booster()
    assert kept.num_boosted_rounds() == best + 1
    # SynapseML's LightGBM keeps the patience rounds too and records no best iteration: a fit that stopped before
    # the ceiling was best `patience` rounds earlier; one that reached it is taken whole.
    lgbm = lgb.train({"verbosity": -1, "num_leaves": 4}, lgb.Dataset(x, y), 20)
    assert tuning.best_rounds(lgbm, "lightgbm", 200, 5) == 15
    assert tuning.best_rounds(lgbm, "lightgbm", 20, 5) == 20
    assert tuning.truncated(lgbm, "lightgbm", 15).booster().num_trees() == 15


def _row(name, rmse, chosen=False, model=True):
    metrics = {
        "rmse": rmse,
        "mae": rmse / 2,
        "rmsle": 0.3,
        "bias": -0.5,
        "n": 1000.0,
        "rmse_pu_borough_Queens": rmse + 1,
        "n_pu_borough_Queens": 300.0,
        "rmse_hour_band_night": rmse + 0.5,
        "rmse_hour_band_midday": rmse - 0.2,
        "rmse_distance_band_10mi_plus": rmse * 2,
        "rmse_distance_band_0-1mi": rmse / 3,
    }
    return {
        "name": name,
        "learner": "x",
        "warm_start": False,
        "chosen": chosen,
        "metrics": metrics,
        "fit_seconds": 3.0,
        "predict_rows_per_s": 1e5 if model else None,
        "model_bytes": 2048 if model else None,
        "params": {},
        **({"interval": {"coverage": 0.8, "raw_coverage": 0.79}} if chosen else {}),
    }


@pytest.mark.unit
def test_the_bakeoff_page_ranks_candidates_states_its_months_and_loads_nothing():
    from jobs.platform.reports import offline

    report = {
        "service": "green",
        "run_id": "abc",
        "valid_month": "2023-01",
        "train_months": ["2022-01", "2022-02"],
        "tuning_month": "2022-02",
        "registered_version": 3,
        "gate_reason": "first model",
        "rows": [
            _row("baseline-zone-pair-median", 6.5, model=False),
            _row("lightgbm-tuned", 4.2, chosen=True),
            _row("xgboost-scratch", 4.4),
        ],
        "tuning": [
            {
                "learner": "lightgbm",
                "tuning_month": "2022-02",
                "tuning_rmse": 4.7,
                "params": {},
                "trials": [
                    {
                        "trial": 0,
                        "rmse": 4.7,
                        "rounds": 60,
                        "workers": 1,
                        "start": 10.0,
                        "end": 20.0,
                        "params": {"numLeaves": 71},
                    },
                    {
                        "trial": 1,
                        "rmse": 4.9,
                        "rounds": 41,
                        "workers": 1,
                        "start": 10.5,
                        "end": 18.0,
                        "params": {"numLeaves": 19},
                    },
                ],
            }
        ],
    }
    page = bakeoff.render(report)
    overall = page[page.index('<table id="overall">') : page.index("</table>", page.index('<table id="overall">'))]
    order = [overall.index(n) for n in ("lightgbm-tuned", "xgboost-scratch", "baseline-zone-pair-median")]
    assert order == sorted(order)  # best first
    assert "<tr class='chosen'><td>lightgbm-tuned</td>" in overall and "+0.200" in overall and "+2.300" in overall
    assert "0.790 raw / 0.800 calibrated" in overall
    assert "<b>2023-01</b>" in page and "2022-01, 2022-02" in page and "ranked on,\n2022-02" in page
    assert "It beats the next candidate, xgboost-scratch, by 0.200 min RMSE" in page
    for table in ("by_pu_borough", "by_hour_band", "by_distance_band", "tuning_lightgbm"):
        assert f"id='{table}'" in page
    band = page[page.index("id='by_hour_band'") :]
    assert band.index("night") < band.index("midday")  # bands in clock order, not alphabetical
    assert "<td>0.5</td><td>8.0</td>" in page  # trial 1: started 0.5 s after trial 0, overlapping it
    assert "deep network" not in page and "ensemble" not in page  # notes only for candidates that ran
    assert offline.remote_loads(page) == []


@pytest.mark.unit
def test_the_bakeoff_says_how_the_network_and_the_ensemble_were_trained():
    from jobs.training.selection import Candidate

    net = Candidate(
        "deep-scratch",
        "deep",
        {"rmse": 4.5},
        30.0,
        "r1",
        fit_info={"sample_rows": 20000, "window_rows": 125364, "epochs_run": 9, "best_epoch": 6},
    )
    xgb = Candidate("xgboost-scratch", "xgboost", {"rmse": 4.4}, 12.0, "r2", train_tasks=2)
    lgb = Candidate("lightgbm-warm-start", "lightgbm", {"rmse": 4.3}, 3.0, "r3", train_tasks=2, warm_start=True)
    ens = Candidate("ensemble-mean", "ensemble", {"rmse": 4.2}, 15.0, "r4", members=[xgb, lgb])
    assert bakeoff.trained_how(net) == "driver, 20,000 of 125,364 rows, 9 epochs (best 6)"
    assert bakeoff.trained_how(lgb) == "Spark, 2 barrier tasks, continues the champion"
    assert bakeoff.trained_how(ens) == "mean on the log scale of xgboost-scratch + lightgbm-warm-start"
    rows = [
        {**_row(c.name, c.rmse, chosen=c is ens), "learner": c.learner, "trained": bakeoff.trained_how(c)}
        for c in (net, xgb, lgb, ens)
    ]
    page = bakeoff.render(
        {
            "service": "green",
            "run_id": "abc",
            "valid_month": "2023-01",
            "rows": rows,
            "train_months": ["2022-01", "2022-02"],
            "tuning_month": None,
        }
    )
    assert "from a bounded sample" in page and "its fit time is its members'" in page
    assert "<td class='params'>driver, 20,000 of 125,364 rows, 9 epochs (best 6)</td>" in page


@pytest.mark.unit
@pytest.mark.parametrize("flag", [["--tune", "-1"], ["--tune", "two"], ["--tune-minutes", "0"]])
def test_bad_tuning_flags_are_refused_before_any_work(flag, capsys):
    from jobs.entry.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--service", "green", "--until", "2023-01", *flag])
    assert e.value.code == 2 and flag[0] in capsys.readouterr().err


# ---- spark + integration --------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_a_search_the_window_cannot_hold_is_refused_before_anything_is_trained_or_logged(spark, lake):
    """A 2-month window has one training month: nothing to stop early on. Refused up front, with no MLflow run."""
    s = lake.model_copy(deep=True)
    s.mlflow.registered_model_prefix = "tune-refused"
    s.train.tune.trials = 2
    client = mlflow.MlflowClient(tracking_uri=s.tracking_uri)
    runs_before = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    with pytest.raises(InputError, match=r"--tune needs at least two training months .*\['2023-01'\]"):
        train.run(spark, s, "green", "2023-02", months=2, force=True)
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == runs_before


@pytest.mark.spark
def test_one_pass_metrics_equal_a_separate_aggregation_per_group(spark):
    from jobs.models.metrics import full_metrics, regression_metrics, with_bands

    rows = [
        (b, h, d, float(t), float(p))
        for b, h, d, t, p in [
            ("Queens", 7, 0.5, 10, 12),
            ("Queens", 7, 12.0, 30, 20),
            ("Bronx", 23, 3.0, 15, 15),
            ("Bronx", 2, None, 8, 9),
            (None, 13, 6.0, 25, 31),
            ("Manhattan", 17, 1.5, 12, 11),
        ]
    ]
    df = spark.createDataFrame(
        rows,
        "pu_borough string, pickup_hour int, trip_distance double, duration_min double, predicted_duration_min double",
    )
    got = full_metrics(df)
    want = regression_metrics(df)
    for by in ("pu_borough", "hour_band", "distance_band"):
        want.update(
            {
                k: v
                for k, v in regression_metrics(with_bands(df), by=by).items()
                if k.startswith(("rmse_", "mae_", "n_"))
            }
        )
    assert got.keys() == want.keys() and got == pytest.approx(want)
    assert got["n_distance_band_None"] == 1 and got["rmse_distance_band_10mi_plus"] == pytest.approx(10.0)
    assert got["n_pu_borough_None"] == 1 and got["n_hour_band_late"] == 1


@pytest.mark.integration
def test_tune_searches_each_learner_before_the_validation_month_and_the_bakeoff_shows_every_candidate(spark, lake):
    s = lake.model_copy(deep=True)
    s.mlflow.registered_model_prefix = "tune-test"
    # No baselines, refit or intervals: the golden build's bake-off has them (test_reports_offline).
    s.train.baselines, s.train.refit, s.train.warm_start, s.train.intervals.enabled = False, False, False, False
    s.train.tune.trials, s.train.tune.parallel_trials, s.train.tune.early_stopping_rounds = 2, 2, 5
    out = train.run(spark, s, "green", "2023-01", months=13)

    assert set(out["tuning"]) == {"xgboost", "lightgbm"}
    client = mlflow.MlflowClient(tracking_uri=s.tracking_uri)
    children = client.search_runs(
        [client.get_run(out["run_id"]).info.experiment_id], f"tags.mlflow.parentRunId = '{out['run_id']}'"
    )
    trials = [r for r in children if r.data.tags.get("tuning") == "trial"]
    assert len(trials) == 4
    for learner, result in out["tuning"].items():
        # The search stopped early on, and ranked on, the last training month; the gate's month took no part.
        assert (result["tuning_month"], out["valid_month"], result["trials"]) == ("2022-02", "2023-01", 2)
        runs = [r for r in trials if r.data.tags["learner"] == learner]
        best = min(runs, key=lambda r: r.data.metrics["tuning_rmse"])
        assert result["tuning_rmse"] == pytest.approx(best.data.metrics["tuning_rmse"], abs=1e-4)
        assert all(r.data.metrics["workers"] == 1 for r in runs)  # two single-slot trials ...
        a, b = (r.info for r in runs)
        assert a.start_time < b.end_time and b.start_time < a.end_time  # ... run at the same time
        # The tuned candidate is fitted with the best trial's values and the rounds its early stopping chose.
        tuned = next(r for r in children if r.info.run_name == f"{learner}-tuned")
        hp = {k.removeprefix("hp_"): v for k, v in best.data.params.items()}
        assert {k: tuned.data.params[f"hp_{k}"] for k in hp} == hp
        rounds = "n_estimators" if learner == "xgboost" else "numIterations"
        assert 1 <= int(hp[rounds]) <= 60
    assert {"xgboost-tuned", "lightgbm-tuned", "xgboost-scratch", "lightgbm-scratch"} <= set(out["candidates"])

    # The bake-off: every candidate on the validation month, the same numbers as the runs, in MLflow and on disk.
    report = json.loads(Path(out["bakeoff"]).with_suffix(".json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == set(out["candidates"])
    for name, rmse in out["candidates"].items():
        assert rows[name]["metrics"]["rmse"] == pytest.approx(rmse, abs=1e-4)
        assert {"rmse_distance_band_0-1mi", "rmse_hour_band_midday", "rmse_pu_borough_Manhattan"} <= set(
            rows[name]["metrics"]
        )
    assert [n for n, r in rows.items() if r["chosen"]] == [out["best_candidate"]]
    assert rows["xgboost-tuned"]["predict_rows_per_s"] > 0 and rows["lightgbm-tuned"]["model_bytes"] > 0
    logged = client.list_artifacts(out["run_id"], "bakeoff")
    assert {f.path.rsplit("/", 1)[-1] for f in logged} >= {"bakeoff.json", out["bakeoff"].rsplit("/", 1)[-1]}
