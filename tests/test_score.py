"""Batch scoring: one row per validated trip with the champion's version, models only from the registry, the
tables BI tools read, and one predictor per worker."""

from __future__ import annotations

import pytest
from deltalake import DeltaTable

from jobs.models import compiled
from jobs.platform import lakehouse

from .conftest import partition_rows, table_version

DEFAULT_TIER = "integration"  # tests without a tier marker of their own


def test_scoring_wrote_one_row_per_validated_trip_with_the_champion_version(golden):
    s, summary = golden.settings, golden.summaries["score"]
    pdf = partition_rows(s, lakehouse.PREDICTIONS, "green", "2023-02")
    trips = partition_rows(s, lakehouse.TRIPS, "green", "2023-02", ["trip_id"])
    assert len(pdf) == len(trips) == summary["rows"]
    assert pdf["trip_id"].is_unique and set(pdf["trip_id"]) == set(trips["trip_id"])
    champion = golden.client().get_model_version_by_alias(s.registered_model("green"), "champion")
    assert set(pdf["model_version"]) == {int(champion.version)} == {summary["model_version"]}
    # The champion's LightGBM boosters (its own and its interval's) were compiled when it was registered, on this
    # platform, so scoring predicted with the libraries (tests/test_compiled.py: the same numbers as the boosters).
    assert champion.tags["compiled_platform"] == compiled.host_platform()
    assert summary["predicts_with"].startswith("compiled trees for ")
    assert set(pdf["features_version"]) == {summary["features_version"]}
    expected = {
        "trip_id",
        "pickup_datetime",
        "pickup_hour",
        "PULocationID",
        "DOLocationID",
        "pickup_zone",
        "dropoff_zone",
        "pickup_borough",
        "dropoff_borough",
        "trip_distance",
        "predicted_duration_min",
        "predicted_p10_min",
        "predicted_p90_min",
        "actual_duration_min",
        "in_training_range",
        "model_name",
        "model_version",
        "features_version",
        "scored_at",
        "scoring_run_id",
        "service",
        "month",
    }
    assert set(pdf.columns) == expected
    assert pdf["predicted_duration_min"].between(0, 300).all()
    # The metrics observed during the write equal a recount of the written rows.
    known = pdf[pdf["in_training_range"]]
    rmse = ((known["predicted_duration_min"] - known["actual_duration_min"]) ** 2).mean() ** 0.5
    assert summary["rmse_in_training_range"] == pytest.approx(rmse, abs=2e-3)
    assert summary["rmse_in_training_range"] <= 4.5  # 60-round models, out-of-sample month


def test_scoring_a_month_without_features_names_the_missing_stage(lake, cli_lakehouse, capsys):
    from jobs.entry.cli import main

    cli_lakehouse(lake)
    version = table_version(lake, lakehouse.PREDICTIONS)
    rc = main(["score", "--service", "green", "--month", "2023-05"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 4
    assert "silver/features has no data for green 2023-05" in err and "taxi features" in err
    assert table_version(lake, lakehouse.PREDICTIONS) == version


def test_models_load_only_from_the_registry(lake, cli_lakehouse, tmp_path, capsys):
    """A version or alias the registry does not hold is refused with the registry named; a local model file is not
    a way in (no option takes a path, and an alias that looks like one is just an unknown alias)."""
    from jobs.entry.cli import main

    cli_lakehouse(lake)
    version = table_version(lake, lakehouse.PREDICTIONS)
    name = lake.registered_model("green")
    rc = main(["score", "--service", "green", "--month", "2023-02", "--model-version", "99"])
    assert rc == 4 and f"no registered model {name} with version 99" in capsys.readouterr().err
    rc = main(["score", "--service", "green", "--month", "2023-02", "--model-alias", str(tmp_path / "model")])
    assert rc == 4 and f"no registered model {name} with alias" in capsys.readouterr().err
    assert table_version(lake, lakehouse.PREDICTIONS) == version


def test_bi_reads_predictions_with_duckdb_and_spark_sql(spark, golden):
    import duckdb

    s = golden.settings
    arrow = DeltaTable(lakehouse.PREDICTIONS.path(s)).to_pyarrow_dataset()
    con = duckdb.connect()
    con.register("predictions", arrow)
    q = """select pickup_borough, pickup_hour, count(*) n,
                  avg(predicted_duration_min) pred, avg(actual_duration_min) act
           from predictions where month = '2023-02' and in_training_range group by 1, 2 order by 1, 2"""
    rows = con.execute(q).fetchall()
    assert len(rows) > 24 and sum(r[2] for r in rows) > 60000
    spark.sql(f"DROP DATABASE IF EXISTS {lakehouse.CATALOG_DB} CASCADE")  # the catalog may point at another lake
    assert "taxi.predictions" in lakehouse.register_tables(spark, s)
    by_spark = spark.sql(
        "select pickup_borough, pickup_hour, count(*) n from taxi.predictions "
        "where service = 'green' and month = '2023-02' and in_training_range group by 1, 2 order by 1, 2"
    ).collect()
    assert [tuple(r) for r in by_spark] == [r[:3] for r in rows]


@pytest.mark.unit
def test_a_worker_builds_each_models_predictor_once():
    import lightgbm as lgb
    import numpy as np

    from jobs.models.flavors import NativeModel, cached_predictor

    rng = np.random.default_rng(0)
    x, y = rng.random((200, 29)), rng.random(200)
    one = NativeModel.from_booster(lgb.train({"verbosity": -1}, lgb.Dataset(x, y), 5))
    other = NativeModel.from_booster(lgb.train({"verbosity": -1}, lgb.Dataset(x, y), 6))
    same = NativeModel(one.flavor, (one.payload + " ")[:-1])  # equal content, a new object (as a task unpickles)
    assert cached_predictor(one) is cached_predictor(same)
    assert cached_predictor(other) is not cached_predictor(one)
    both = NativeModel.ensemble([one, other])
    np.testing.assert_allclose(
        cached_predictor(both)(x.astype("float32")),
        (one.predictor()(x.astype("float32")) + other.predictor()(x.astype("float32"))) / 2,
    )
