"""The footing: the installed Spark line, config loading and overrides, month arithmetic."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from jobs.platform.config import ConfigError, load_settings
from jobs.platform.errors import InputError
from jobs.platform.months import (
    add_months,
    check_month,
    check_week,
    history_window,
    month_window,
    previous_months,
    week_bounds,
    week_months,
)

from .conftest import ROOT

DEFAULT_TIER = "unit"  # tests without a tier marker of their own


def _pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {m.group(1): m.group(2) for d in deps if (m := re.match(r"([A-Za-z0-9_.-]+)==(.+)", d))}


def test_pyspark_is_the_full_pinned_distribution_not_pyspark_client():
    """pyspark-client 4 (pulled by the Spark provider 6.x) overwrites pyspark's Python files and ships no JARs: the
    installed pyspark must be the pinned 3.5 line with its own Spark JARs of the same version."""
    from importlib.metadata import version
    from pathlib import Path

    import pyspark

    assert pyspark.__version__ == _pins()["pyspark"]
    jars = {p.name for p in (Path(pyspark.__file__).parent / "jars").glob("spark-core_*.jar")}
    assert jars == {f"spark-core_2.12-{_pins()['pyspark']}.jar"}
    provider = version("apache-airflow-providers-apache-spark")
    assert provider == _pins()["apache-airflow-providers-apache-spark"] and provider.startswith("5.")


def test_default_profile_paths_and_tracking_uri(tmp_path):
    s = load_settings(env={"TAXI_LAKEHOUSE": str(tmp_path / "lh")})
    assert s.lakehouse == tmp_path / "lh"
    assert s.tracking_uri == f"sqlite:///{tmp_path / 'lh' / 'mlflow' / 'mlflow.db'}"
    assert s.spark.master == "local[*]"
    assert s.data.zone_lookup.is_absolute() and s.data.zone_lookup.exists()
    assert s.registered_model("green") == "taxi-duration-green"


def test_env_overrides_and_overlay_file(tmp_path):
    overlay = tmp_path / "prod.yaml"
    overlay.write_text("spark:\n  master: spark://10.0.0.1:7077\nvalidation:\n  max_failed_share: 0.2\n")
    s = load_settings(
        env={
            "TAXI_CONF": str(overlay),
            "TAXI__TRAIN__XGBOOST__max_depth": "6",
            "TAXI__SPARK__CONF__spark.sql.shuffle.partitions": "16",
            "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        }
    )
    assert s.spark.master == "spark://10.0.0.1:7077"
    assert s.validation.max_failed_share == 0.2
    defaults = load_settings(env={})
    assert s.train.xgboost["max_depth"] == 6  # overridden key; its siblings keep the profile's values
    assert s.train.xgboost["learning_rate"] == defaults.train.xgboost["learning_rate"]
    assert s.spark.conf["spark.sql.shuffle.partitions"] == "16"
    assert s.tracking_uri == "http://mlflow:5000"
    # Keys below a section's fields keep their case at any depth; section and field names do not care.
    deep = load_settings(
        env={"TAXI__TRAIN__INTERVALS__PARAMS__numIterations": "7", "TAXI__MONITOR__COVERAGE_MIN": "0.7"}
    )
    assert deep.train.intervals.params == {"numIterations": 7} and deep.monitor.coverage_min == 0.7


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({"TAXI__VALIDATION__MAX_FAILED_SHARE": "1.5"}, "max_failed_share"),
        ({"TAXI__SPARK__MASTER": "ftp://x"}, "unsupported Spark master"),
        ({"TAXI__FEATURES__NO_SUCH_KEY": "1"}, "no_such_key"),
        ({"TAXI_CONF": "/nonexistent.yaml"}, "config file not found"),
        ({"TAXI_LAKEHOUSE": "s3a://taxi-bucket/lake"}, "lakehouse s3a://taxi-bucket/lake: the embedded MLflow store"),
        ({"TAXI_LAKEHOUSE": "abfss://c@acct.dfs.core.windows.net/lake"}, "abfss:// is not supported"),
        ({"TAXI_LAKEHOUSE": "s3a://", "MLFLOW_TRACKING_URI": "http://m:5000"}, "name a bucket"),
        ({"TAXI__MONITOR__COVERAGE_MIN": "0.9"}, "coverage_min must be below coverage_max"),
        ({"TAXI__FEATURES__HISTORY_LOOKBACK_MONTHS": "2"}, "history_lookback_months must be at least history_months"),
    ],
)
def test_invalid_config_names_the_key(env, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_settings(env=env)


def test_an_unsupported_lakehouse_scheme_is_refused_at_start_up_and_nothing_is_written(tmp_path):
    env = {**os.environ, "TAXI_LAKEHOUSE": "gs://taxi-bucket/lake"}
    out = subprocess.run(
        [sys.executable, "-m", "jobs.entry.cli", "ingest", "--service", "green", "--month", "2023-01"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "gs:// is not supported" in out.stderr, out.stderr[-2000:]
    assert list(tmp_path.iterdir()) == [] and not (ROOT / "gs:").exists()  # no folder named after the scheme
    assert load_settings(env={"TAXI_LAKEHOUSE": f"file://{tmp_path}/lake"}).lakehouse == tmp_path / "lake"


def test_object_store_lakehouse_uris_and_the_connector_settings_come_from_the_aws_environment(monkeypatch):
    from jobs.platform import lakehouse, storage
    from jobs.platform.spark import session_packages

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    s = load_settings(env={"TAXI_LAKEHOUSE": "s3://taxi-bucket/lake/", "MLFLOW_TRACKING_URI": "http://m:5000"})
    assert storage.is_remote(s.lakehouse) and str(s.lakehouse) == "s3a://taxi-bucket/lake"  # Hadoop's scheme
    assert lakehouse.PREDICTIONS.path(s) == "s3a://taxi-bucket/lake/gold/predictions"
    assert s.catalog_dir.is_absolute() and not s.catalog_dir.is_relative_to(ROOT)  # Derby never goes to the bucket
    conf = storage.spark_conf()
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9000"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert conf["spark.hadoop.fs.s3a.endpoint.region"] == "eu-west-1"
    assert not any("key" in k for k in conf)  # credentials stay in the environment
    assert storage.delta_storage_options(s.lakehouse) == {
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_ALLOW_HTTP": "true",
    }
    import pyspark

    hadoop = re.search(r"hadoop-client-api-([\d.]+)\.jar", " ".join(os.listdir(Path(pyspark.__file__).parent / "jars")))
    assert session_packages(s)[-1] == f"org.apache.hadoop:hadoop-aws:{hadoop.group(1)}"  # must match Spark's Hadoop
    local = load_settings(env={})
    assert not storage.is_remote(local.lakehouse) and storage.delta_storage_options(local.lakehouse) is None
    assert not any("hadoop-aws" in p for p in session_packages(local))  # the 270 MB SDK only where it is needed


@pytest.mark.parametrize("bad", ["2023-13", "2023-00", "../x", "2023-1", "23-01", "", "2023-01; rm -rf /"])
def test_bad_months_are_refused(bad):
    with pytest.raises(InputError, match="invalid month"):
        check_month(bad)


def test_month_and_week_arithmetic():
    assert add_months("2023-01", -1) == "2022-12" and add_months("2022-12", 1) == "2023-01"
    assert previous_months("2023-02", 3) == ["2022-11", "2022-12", "2023-01"]
    assert month_window("2023-01", 2) == ["2022-12", "2023-01"]
    # History: the latest n present months within the lookback, whatever the gaps; never the month itself or later.
    present = ["2021-12", "2022-01", "2022-02", "2022-11", "2023-01", "2023-02", "2023-03"]
    assert history_window("2023-02", present, 3, 13) == ["2022-02", "2022-11", "2023-01"]
    assert history_window("2023-02", present, 5, 13) == ["2022-01", "2022-02", "2022-11", "2023-01"]  # 2021-12: too old
    assert history_window("2023-02", present, 3, 3) == ["2022-11", "2023-01"]
    assert history_window("2021-12", present, 3, 13) == []
    start, end = week_bounds("2023-W06")
    assert (start.isoformat(), end.isoformat()) == ("2023-02-06T00:00:00", "2023-02-13T00:00:00")
    assert week_months("2023-W05") == ["2023-01", "2023-02"]  # Jan 30 - Feb 5
    assert check_week("2023-W06") == "2023-W06"
    with pytest.raises(InputError):
        check_week("2023-W54")


@pytest.mark.unit
def test_every_config_key_is_documented():
    """The README or a docs page it links names every key of the config, as `section.key` or, in a row that names
    its section (`train.deep.max_rows` / `epochs`), as `key`."""
    from pydantic import BaseModel

    from jobs.platform.config import SearchDim, Settings

    def keys(model: type[BaseModel], prefix: str = "") -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            kind = field.annotation
            if isinstance(kind, type) and issubclass(kind, BaseModel) and kind is not SearchDim:
                out += keys(kind, f"{prefix}{name}.")
            else:
                out.append(f"{prefix}{name}")
        return out

    readme = (ROOT / "README.md").read_text()
    linked = {ROOT / link for link in re.findall(r"\]\((docs/[\w-]+\.md)", readme)}
    lines = "\n".join([readme, *(p.read_text() for p in sorted(linked))]).splitlines()
    missing = []
    for key in keys(Settings):
        section, _, name = key.rpartition(".")
        named = (f"`{key}`", f"`{key}.")  # the key itself, or a pattern below it (`train.tune.space.<learner>`)
        in_its_row = [line for line in lines if section and f"`{section}." in line and f"`{name}`" in line]
        if not in_its_row and not any(n in line for line in lines for n in named):
            missing.append(key)
    assert missing == []
