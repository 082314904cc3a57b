"""One typed, validated configuration, loaded once and passed down.

Sources, later wins:
1. ``conf/local.yaml`` (the embedded default profile);
2. the YAML file named by ``TAXI_CONF`` (merged key by key);
3. ``TAXI__SECTION__KEY=value`` env vars (value parsed as YAML), e.g. ``TAXI__SPARK__MASTER=spark://h:7077``;
4. the shortcuts ``TAXI_LAKEHOUSE`` and ``MLFLOW_TRACKING_URI``.

No other module reads the environment for settings.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobs.platform.config_sources import ConfigError, deep_merge, env_overrides, read_yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONF = PROJECT_ROOT / "conf" / "local.yaml"

SERVICES = ("green", "yellow")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    sample_dir: Path
    zone_lookup: Path
    zone_centroids: Path
    source_url_template: str
    allowed_roots: list[Path]


class SparkConfig(_Section):
    master: str = "local[*]"
    app_name: str = "taxi"
    packages: list[str] = Field(default_factory=list)
    # Added to the packages when the lakehouse is on object storage: hadoop-aws must match Spark's Hadoop (3.3.4 in
    # pyspark 3.5), and brings the AWS SDK bundle it was built against.
    object_store_packages: list[str] = Field(default_factory=list)
    jar_cache: Path
    # Map the driver classes archived by `taxi class-archive` (in jar_cache) at every driver JVM's start.
    class_archive: bool = True
    # More options for every driver JVM the project starts (get_spark, and the Airflow tasks through
    # `taxi class-archive`'s output), after the archive's: e.g. JIT settings for short-lived drivers.
    driver_java_options: str = ""
    conf: dict[str, str] = Field(default_factory=dict)

    @field_validator("master")
    @classmethod
    def _known_master(cls, v: str) -> str:
        if not (v.startswith(("local", "spark://", "k8s://", "mesos://")) or v == "yarn"):
            raise ValueError(f"unsupported Spark master {v!r}: use local[*], spark://, yarn or k8s://")
        return v

    @field_validator("driver_java_options", mode="before")
    @classmethod
    def _none_is_no_options(cls, v: str | None) -> str:
        return v or ""  # an empty override (TAXI__SPARK__DRIVER_JAVA_OPTIONS=) reads as null

    @field_validator("conf", mode="before")
    @classmethod
    def _stringify(cls, v: dict[str, Any]) -> dict[str, str]:
        return {k: str(val).lower() if isinstance(val, bool) else str(val) for k, val in (v or {}).items()}


class MlflowConfig(_Section):
    tracking_uri: str | None = None
    experiment_prefix: str = "taxi"
    registered_model_prefix: str = "taxi-duration"
    # Reaching the tracking server: tries, and the first pause between them (doubled after each failed try).
    connect_retries: int = Field(3, ge=1)
    connect_backoff_s: float = Field(2.0, ge=0)


class LakehouseWritesConfig(_Section):
    # Optimistic concurrency: a write that loses the commit race to another writer is retried this many times,
    # pausing conflict_backoff_s * 2**attempt (plus at most 1 s of jitter) in between.
    conflict_retries: int = Field(5, ge=1)
    conflict_backoff_s: float = Field(0.5, ge=0)
    # An s3a:// lakehouse's Delta log store (jobs.platform.log_store): dynamodb lets any number of drivers commit;
    # single-driver is Delta's default, safe only while one driver at a time writes.
    s3_log_store: Literal["dynamodb", "single-driver"] = "dynamodb"
    dynamodb_table: str = "taxi_delta_log"
    dynamodb_region: str | None = None  # None: AWS_REGION, else us-east-1
    dynamodb_endpoint: str | None = None  # None: AWS_ENDPOINT_URL_DYNAMODB or AWS_ENDPOINT_URL, else AWS's
    dynamodb_ttl_s: int = Field(86400, ge=3600)  # a finished commit's entry expires after this long
    # The validation reports' GX project is held by one process at a time (jobs.platform.lease): on the DynamoDB
    # store, a lease of lease_s seconds, extended while held; a holder that dies frees it within lease_s.
    lease_s: int = Field(120, ge=10)
    lease_wait_s: int = Field(3600, ge=1)  # how long a job waits for the lease before it fails, naming the holder


class IngestConfig(_Section):
    min_share_in_month: float = Field(0.5, ge=0, le=1)
    download_timeout_s: int = Field(300, gt=0)


class ValidationConfig(_Section):
    max_failed_share: float = Field(0.10, ge=0, le=1)
    min_rows_vs_previous: float = Field(0.5, ge=0)
    max_rows_vs_previous: float = Field(2.0, gt=0)
    max_duration_hours: float = Field(24, gt=0)
    max_trip_distance_miles: float = Field(100, gt=0)
    max_passenger_count: int = Field(9, gt=0)
    max_fare_amount: float = 1000
    min_fare_amount: float = 0
    result_format: Literal["BASIC", "SUMMARY", "COMPLETE"] = "BASIC"
    partial_unexpected_count: int = Field(5, ge=0)


class FeaturesConfig(_Section):
    history_months: int = Field(3, ge=1)
    history_lookback_months: int = Field(13, ge=1)
    min_history_trips: int = Field(5, ge=1)
    target_min_minutes: float = Field(1, ge=0)
    target_max_minutes: float = Field(60, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> FeaturesConfig:
        if self.target_min_minutes >= self.target_max_minutes:
            raise ValueError("features.target_min_minutes must be below target_max_minutes")
        if self.history_lookback_months < self.history_months:
            raise ValueError("features.history_lookback_months must be at least history_months")
        return self


LEARNERS = ("xgboost", "lightgbm")


class DeepConfig(_Section):
    """The deep tabular challenger (learner ``deep``, the ``[deep]`` extra): a Wide & Deep network in Keras 3 on
    JAX, trained on the driver from a bounded sample of the training rows (no well-kept tool trains it on Spark)."""

    max_rows: int = Field(400_000, ge=1000)  # the bounded sample the driver collects and trains on
    epochs: int = Field(30, ge=1)  # the ceiling; early stopping on a random holdout of the training sample
    patience: int = Field(3, ge=1)
    holdout_fraction: float = Field(0.1, gt=0, lt=0.5)
    batch_size: int = Field(1024, ge=16)
    learning_rate: float = Field(0.001, gt=0)
    zone_embedding: int = Field(16, ge=1)  # width of the pickup and dropoff zone embeddings (the rest scale down)
    hidden: list[int] = Field(default_factory=lambda: [256, 128, 64])
    dropout: float = Field(0.1, ge=0, lt=1)


class IntervalConfig(_Section):
    """Conformalized quantile regression (CQR): every prediction gets an interval of the stated coverage."""

    enabled: bool = True
    coverage: float = Field(0.8, gt=0, lt=1)  # the interval's target share of trips: 0.8 -> p10 .. p90
    params: dict[str, Any] = Field(default_factory=dict)  # overrides of train.lightgbm for the two quantile models


class SearchDim(_Section):
    """One hyperparameter's range for `taxi train --tune`: ``low``..``high`` (``log``: sampled on a log scale,
    ``type: int``: whole numbers), or a list of ``choices``."""

    type: Literal["float", "int"] = "float"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self):
        if self.choices is None and (self.low is None or self.high is None or not self.low < self.high):
            raise ValueError("a search dimension needs low < high, or choices")
        if self.log and self.choices is None and self.low <= 0:
            raise ValueError("a log-scale search dimension needs low > 0")
        return self


class TuneConfig(_Section):
    """Hyperparameter search per learner (Optuna TPE) before the gate; off unless trials > 0 or --tune N."""

    trials: int = Field(0, ge=0)  # trials per learner (--tune N)
    minutes: float | None = Field(None, gt=0)  # time budget per learner (--tune-minutes); None: trials only
    parallel_trials: int = Field(2, ge=1)  # trials at once, each over free slots / parallel_trials workers
    early_stopping_rounds: int = Field(30, ge=1)  # on the tuning month; the learner's rounds are the ceiling
    space: dict[str, dict[str, SearchDim]] = Field(default_factory=dict)  # learner -> param -> range


class TrainConfig(_Section):
    months: int = Field(12, ge=1)
    learners: list[Literal["xgboost", "lightgbm", "deep"]] = Field(default_factory=lambda: list(LEARNERS))
    baselines: bool = True
    margin: float = Field(0.0, ge=0)
    num_workers: int | None = Field(None, ge=1)
    refit: bool = True
    warm_start: bool = True
    warm_start_rounds: int = Field(100, ge=1)
    seed: int = 42
    xgboost: dict[str, Any] = Field(default_factory=dict)
    lightgbm: dict[str, Any] = Field(default_factory=dict)
    intervals: IntervalConfig = IntervalConfig()
    tune: TuneConfig = TuneConfig()
    deep: DeepConfig = DeepConfig()
    # The mean of the best XGBoost and LightGBM candidates on the log scale enters the gate too (kept only if it wins).
    ensemble: bool = True
    # `taxi promote --version N` needs N to have beaten the champion in shadow in each of the latest this-many
    # monitored weeks (0: no shadow record needed).
    promote_after_shadow_weeks: int = Field(0, ge=0)
    # Compile the registered version's LightGBM boosters to native code (lleaves), stored with the version.
    compile_trees: bool = True


class ScoreConfig(_Section):
    model_alias: str = "champion"
    batch_size: int = Field(50000, gt=0)
    # Predict with the version's compiled trees where this host's platform is theirs (else with the boosters).
    compiled_trees: bool = True


class MonitorConfig(_Section):
    bins: int = Field(10, ge=2)
    psi_threshold: float = Field(0.2, gt=0)
    js_threshold: float = Field(0.1, gt=0)
    share_of_drifted_features: float = Field(0.3, gt=0, le=1)
    rmse_threshold: float = Field(8.0, gt=0)  # absolute ceiling on a week's RMSE (minutes)
    rmse_ratio: float = Field(1.25, gt=1)  # error when week RMSE > rmse_ratio x the reference (validation) RMSE
    drift_weeks: int = Field(2, ge=1)  # retrain for drift when drift_weeks of the last drift_window weeks drifted
    drift_window: int = Field(3, ge=1)
    key_features: list[str] = Field(default_factory=lambda: ["trip_distance", "PULocationID", "DOLocationID"])
    max_reference_missing: float = Field(0.5, gt=0, le=1)  # a feature mostly missing in the reference is not judged
    sample_rows: int = Field(20000, gt=0)
    # A complete week whose interval coverage (share of known trips inside their interval) leaves this range is an
    # accuracy breach, like an RMSE over its limit.
    coverage_min: float = Field(0.75, gt=0, lt=1)
    coverage_max: float = Field(0.85, gt=0, le=1)
    # The segments of the metric tables (`monitoring/accuracy_metrics`): columns of the scored trips with their
    # features, plus `hour_band` and `distance_band`; every window also gets a whole-population row.
    slices: list[str] = Field(default_factory=lambda: ["pu_borough", "hour_band", "distance_band", "VendorID"])

    @model_validator(mode="after")
    def _coverage_range(self) -> MonitorConfig:
        if self.coverage_min >= self.coverage_max:
            raise ValueError("monitor.coverage_min must be below coverage_max")
        return self


POLICIES = ("monthly", "frozen", "drift", "always")


class BacktestConfig(_Section):
    """`taxi backtest`: the retraining policies it compares, and when a week counts as really degraded."""

    policies: list[Literal["monthly", "frozen", "drift", "always"]] = Field(default_factory=lambda: list(POLICIES))
    # A week is degraded when its RMSE exceeds the reference by monitor.rmse_ratio, or exceeds the freshest model's
    # RMSE on the same trips by this share.
    degraded_share: float = Field(0.1, gt=0)

    @field_validator("policies")
    @classmethod
    def _monthly_is_the_real_run(cls, v: list[str]) -> list[str]:
        if "monthly" not in v:
            raise ValueError("backtest.policies must include monthly: the real run every other policy is compared with")
        return list(dict.fromkeys(v))


class AirflowConfig(_Section):
    """Read by the DAG files when Airflow parses them, and by `taxi airflow-init`."""

    start_date: dt.date = dt.date(2022, 1, 1)  # the first month the monthly DAGs process
    end_date: dt.date | None = None  # the last one (None: keep going with the calendar)
    catchup: bool = True  # create the runs of months between start_date and now that never ran
    spark_pool: str = "taxi_spark"  # every spark-submit task takes a slot of this pool
    spark_pool_slots: int = Field(1, ge=1)  # Spark jobs at once on this deployment (set by taxi airflow-init)
    publication_poke_s: int = Field(6 * 3600, ge=1)  # how often a monthly run checks whether its file is out
    publication_timeout_days: int = Field(90, ge=1)  # after the month ends; then the run fails, naming the source


class SqlServerConfig(_Section):
    """`taxi sql-server`: Spark's Thrift server (HiveServer2 protocol) for BI tools."""

    host: str = "127.0.0.1"  # any other address is refused unless authentication is LDAP or CUSTOM
    port: int = Field(10000, ge=1, le=65535)
    authentication: Literal["NONE", "LDAP", "CUSTOM"] = "NONE"
    hive_conf: dict[str, str] = Field(default_factory=dict)  # more hive.server2.* settings: TLS, LDAP URL ...
    start_timeout_s: int = Field(180, gt=0)


class LogConfig(_Section):
    # Where the libraries' own messages go (Python warnings, MLflow's and GX's notices, the Spark JVM's warnings),
    # beside every job line; the terminal shows the job's lines and errors. None: no file.
    file: Path | None = None


class Settings(_Section):
    lakehouse: Any  # pathlib.Path, or upath.UPath for an object-store lakehouse (jobs.platform.storage)
    data: DataConfig
    spark: SparkConfig
    mlflow: MlflowConfig = MlflowConfig()
    writes: LakehouseWritesConfig = LakehouseWritesConfig()
    ingest: IngestConfig = IngestConfig()
    validation: ValidationConfig = ValidationConfig()
    features: FeaturesConfig = FeaturesConfig()
    train: TrainConfig = TrainConfig()
    score: ScoreConfig = ScoreConfig()
    monitor: MonitorConfig = MonitorConfig()
    backtest: BacktestConfig = BacktestConfig()
    airflow: AirflowConfig = AirflowConfig()
    sql_server: SqlServerConfig = SqlServerConfig()
    log: LogConfig = LogConfig()

    @field_validator("lakehouse", mode="before")
    @classmethod
    def _lakehouse_location(cls, value: Any) -> Any:
        """A local path, ``file://`` or ``s3a://``/``s3://`` URI (see :mod:`jobs.platform.storage`). Any other
        scheme is refused here: read as a path, ``gs://bucket/lake`` would silently become a folder named ``gs:``
        inside the project."""
        from jobs.platform.storage import location

        return location(value)

    @model_validator(mode="after")
    def _absolute_paths(self) -> Settings:
        """Relative paths resolve against the project root, so jobs behave the same from any cwd."""

        def fix(p: Path) -> Path:
            return p if p.is_absolute() else (PROJECT_ROOT / p).resolve()

        if isinstance(self.lakehouse, Path):
            self.lakehouse = fix(self.lakehouse)
        elif self.mlflow.tracking_uri is None:
            raise ValueError(
                f"lakehouse {self.lakehouse}: the embedded MLflow store is a sqlite file, which cannot live on object "
                "storage; set mlflow.tracking_uri (or MLFLOW_TRACKING_URI) to a tracking server, e.g. one started "
                "with `mlflow server --artifacts-destination s3://bucket/mlflow`"
            )
        self.data.sample_dir = fix(self.data.sample_dir)
        self.log.file = fix(self.log.file) if self.log.file else None
        self.data.zone_lookup = fix(self.data.zone_lookup)
        self.data.zone_centroids = fix(self.data.zone_centroids)
        self.data.allowed_roots = [fix(p) for p in self.data.allowed_roots]
        self.spark.jar_cache = fix(self.spark.jar_cache)
        return self

    # ---- derived locations ------------------------------------------------------------------
    @property
    def tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.lakehouse / 'mlflow' / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.lakehouse / "mlflow" / "artifacts"

    @property
    def catalog_dir(self) -> Path:
        """Spark's session catalog (warehouse folder and Derby home): beside a local lakehouse; on local disk for an
        object-store one, where the jobs only ever register external tables in it."""
        if isinstance(self.lakehouse, Path):
            return self.lakehouse / "_catalog"
        return Path(tempfile.gettempdir()) / f"taxi-catalog-{os.getuid()}"

    @property
    def reports_dir(self) -> Path:
        return self.lakehouse / "reports"

    @property
    def raw_dir(self) -> Path:
        return self.lakehouse / "raw"

    def registered_model(self, service: str) -> str:
        return f"{self.mlflow.registered_model_prefix}-{service}"

    def experiment(self, name: str) -> str:
        return f"{self.mlflow.experiment_prefix}-{name}"


def load_settings(env: dict[str, str] | None = None, conf_file: str | Path | None = None) -> Settings:
    """Build the Settings from the default profile, an optional overlay file and the environment."""
    env = dict(os.environ if env is None else env)
    data = read_yaml(DEFAULT_CONF)
    overlay = conf_file or env.get("TAXI_CONF")
    if overlay:
        data = deep_merge(data, read_yaml(Path(overlay)))
    data = deep_merge(data, env_overrides(env, Settings))
    if env.get("TAXI_LAKEHOUSE"):
        data["lakehouse"] = env["TAXI_LAKEHOUSE"]
    if env.get("MLFLOW_TRACKING_URI"):
        data.setdefault("mlflow", {})["tracking_uri"] = env["MLFLOW_TRACKING_URI"]
    try:
        return Settings.model_validate(data)
    except Exception as e:  # pydantic's message names the key path
        raise ConfigError(f"invalid configuration: {e}") from e
