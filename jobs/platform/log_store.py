"""How Delta commits to an ``s3a://`` lakehouse (``writes.s3_log_store``), and the JAR of the many-writer store.

S3 has no put-if-absent: Delta's default S3 log store (``S3SingleDriverLogStore``) keeps two writers of one table
apart only inside one driver JVM, so two drivers committing the same version at once can silently lose a commit.
``dynamodb`` (the default) commits through ``taxi.delta.DynamoDBLogStore`` (``jvm/DynamoDBLogStore.java``): a
DynamoDB conditional put decides which driver owns each version, for any number of drivers on any hosts. Its table
has the layout of Delta's own ``S3DynamoDBLogStore`` (not served by this project's Maven mirror, and without an
endpoint setting in Delta 3.3), and it takes an endpoint, so MinIO beside an open-source DynamoDB-compatible server
works as AWS does.

The class is compiled once per source and JAR set into ``spark.jar_cache`` (javac, from a JDK) against the cached
Delta, Hadoop and AWS SDK JARs. ``single-driver`` keeps Delta's default: safe only while one driver at a time writes,
so a deployment that can run several Spark jobs at once is refused on it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

from jobs.platform import storage
from jobs.platform.config import Settings
from jobs.platform.config_sources import ConfigError

SOURCE = Path(__file__).parent / "jvm" / "DynamoDBLogStore.java"
DYNAMODB_CLASS = "taxi.delta.DynamoDBLogStore"
SINGLE_DRIVER_CLASS = "io.delta.storage.S3SingleDriverLogStore"
HADOOP_PREFIX = "spark.hadoop.taxi.delta.dynamodb."
# What the class compiles against: Delta's LogStore API, the AWS SDK's DynamoDB client, Hadoop's FileSystem.
COMPILE_AGAINST = ("delta-storage-", "aws-java-sdk-bundle-", "hadoop-client-api-")


def uses_dynamodb(settings: Settings, object_store: bool | None = None) -> bool:
    remote = storage.is_remote(settings.lakehouse) if object_store is None else object_store
    return remote and settings.writes.s3_log_store == "dynamodb"


def endpoint(settings: Settings) -> str:
    """The configured endpoint, else the AWS SDKs' own variables, else empty (AWS's endpoint for the region)."""
    env = os.environ
    return settings.writes.dynamodb_endpoint or env.get("AWS_ENDPOINT_URL_DYNAMODB") or env.get("AWS_ENDPOINT_URL", "")


def region(settings: Settings) -> str:
    env = os.environ
    return settings.writes.dynamodb_region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"


def spark_conf(settings: Settings) -> dict[str, str]:
    """The session conf choosing the log store of an object-store lakehouse (none for a local one)."""
    if not storage.is_remote(settings.lakehouse):
        return {}
    if not uses_dynamodb(settings):
        return {"spark.delta.logStore.s3a.impl": SINGLE_DRIVER_CLASS}
    w = settings.writes
    return {
        "spark.delta.logStore.s3a.impl": DYNAMODB_CLASS,
        f"{HADOOP_PREFIX}table": w.dynamodb_table,
        f"{HADOOP_PREFIX}region": region(settings),
        f"{HADOOP_PREFIX}endpoint": endpoint(settings),
        f"{HADOOP_PREFIX}ttl_seconds": str(w.dynamodb_ttl_s),
    }


def check_writers(settings: Settings) -> None:
    """Refuse the single-driver store where several Spark jobs may write at once: it would lose commits silently."""
    if not storage.is_remote(settings.lakehouse) or uses_dynamodb(settings):
        return
    slots = settings.airflow.spark_pool_slots
    if slots > 1:
        raise ConfigError(
            f"writes.s3_log_store is single-driver but airflow.spark_pool_slots is {slots}: "
            "several drivers committing to one table on S3 can lose a commit with it; set writes.s3_log_store: "
            "dynamodb (a DynamoDB table decides each commit), or airflow.spark_pool_slots: 1"
        )


def dynamodb_client(settings: Settings):
    """A boto3 DynamoDB client on the log store's endpoint and region (credentials: the AWS default chain)."""
    import boto3

    return boto3.client("dynamodb", endpoint_url=endpoint(settings) or None, region_name=region(settings))


def create_table(settings: Settings, timeout_s: float = 120) -> dict[str, object]:
    """Create the log store's DynamoDB table if it is missing (the layout the class expects; on-demand capacity;
    ``expireTime`` as its TTL attribute) and wait until it is active: what a deployment's init step runs
    (`taxi log-store init`). The class creates it too on first use, where its credentials may."""
    import time

    name = settings.writes.dynamodb_table
    client = dynamodb_client(settings)
    existing = client.list_tables()["TableNames"]
    created = name not in existing
    if created:
        client.create_table(
            TableName=name,
            AttributeDefinitions=[
                {"AttributeName": "tablePath", "AttributeType": "S"},
                {"AttributeName": "fileName", "AttributeType": "S"},
            ],
            KeySchema=[
                {"AttributeName": "tablePath", "KeyType": "HASH"},
                {"AttributeName": "fileName", "KeyType": "RANGE"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
    deadline = time.monotonic() + timeout_s
    while client.describe_table(TableName=name)["Table"]["TableStatus"] != "ACTIVE":
        if time.monotonic() > deadline:
            raise ConfigError(f"DynamoDB table {name} at {endpoint(settings) or region(settings)} is not active")
        time.sleep(1)
    if created:
        spec = {"AttributeName": "expireTime", "Enabled": True}
        client.update_time_to_live(TableName=name, TimeToLiveSpecification=spec)
    return {"table": name, "endpoint": endpoint(settings) or None, "region": region(settings), "created": created}


def jar_path(settings: Settings, against: list[str]) -> Path:
    """One JAR per source text and per set of JARs it compiles against."""
    digest = hashlib.blake2b(SOURCE.read_bytes(), digest_size=6)
    digest.update("\n".join(sorted(Path(j).name for j in against)).encode())
    return settings.spark.jar_cache / f"taxi-delta-log-store-{digest.hexdigest()}.jar"


def compile_classpath(maven_jars: list[str]) -> list[str]:
    from pyspark.find_spark_home import _find_spark_home

    spark_jars = sorted(str(p) for p in (Path(_find_spark_home()) / "jars").glob("*.jar"))
    found = [j for j in [*maven_jars, *spark_jars] if Path(j).name.split("_")[-1].startswith(COMPILE_AGAINST)]
    missing = [p for p in COMPILE_AGAINST if not any(Path(j).name.split("_")[-1].startswith(p) for j in found)]
    if missing:
        raise ConfigError(
            f"the DynamoDB log store compiles against {', '.join(m + '*.jar' for m in missing)}, which the JAR cache "
            "lacks: keep io.delta:delta-spark in spark.packages and hadoop-aws in spark.object_store_packages"
        )
    return found


def ensure_jar(settings: Settings, maven_jars: list[str]) -> str:
    """The log store's JAR, compiled now if this source and JAR set have none yet."""
    against = compile_classpath(maven_jars)
    jar = jar_path(settings, against)
    if jar.exists():
        return str(jar)
    javac = shutil.which("javac", path=str(Path(os.environ.get("JAVA_HOME", "/nonexistent")) / "bin"))
    javac = javac or shutil.which("javac")
    if javac is None:
        raise ConfigError(
            "writes.s3_log_store: dynamodb compiles a small Delta log store class once, and needs javac (a JDK, e.g. "
            "Debian's openjdk-17-jdk-headless); install one, or build the image with it (docker/Dockerfile does)"
        )
    jar.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="taxi-log-store-") as tmp:
        cmd = [javac, "-Xlint:-options", "--release", "8", "-d", tmp, "-cp", os.pathsep.join(against), str(SOURCE)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise ConfigError(f"compiling {SOURCE.name} failed: {out.stderr.strip()[-2000:]}")
        partial = jar.with_suffix(f".{os.getpid()}.tmp")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as z:  # fixed times: the same bytes every build
            z.writestr(zipfile.ZipInfo("META-INF/MANIFEST.MF", (1980, 1, 1, 0, 0, 0)), "Manifest-Version: 1.0\n")
            for cls in sorted(Path(tmp).rglob("*.class")):
                z.writestr(zipfile.ZipInfo(cls.relative_to(tmp).as_posix(), (1980, 1, 1, 0, 0, 0)), cls.read_bytes())
        os.replace(partial, jar)  # drivers starting at once each build; the last rename wins with the same bytes
    return str(jar)
