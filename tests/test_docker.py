"""Docker files checked without a Docker engine: lint, Compose-spec validity, pinned images, mounted paths."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml
from compose_spec import PyCompose

from .conftest import ROOT

DEFAULT_TIER = "unit"  # tests without a tier marker of their own
DOCKER = ROOT / "docker"


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())  # PyYAML resolves the anchors/merge keys


def test_dockerfiles_pass_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    out = subprocess.run(
        [str(hadolint), "--failure-threshold", "warning", "Dockerfile", "mlflow.Dockerfile"],
        cwd=DOCKER,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_file_is_valid_against_the_compose_spec_and_has_the_stack():
    spec = {k: v for k, v in _compose().items() if not k.startswith("x-")}
    compose = PyCompose.from_json(json.dumps(spec))
    assert sorted(compose.service_names()) == [
        "airflow-api-server",
        "airflow-dag-processor",
        "airflow-init",
        "airflow-scheduler",
        "dynamodb",
        "log-store-init",
        "minio",
        "minio-init",
        "mlflow",
        "postgres",
        "spark-master",
        "spark-worker-1",
        "spark-worker-2",
    ]
    services = spec["services"]
    assert services["airflow-scheduler"]["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    assert "--backend-store-uri postgresql://" in " ".join(services["mlflow"]["command"].split())
    # The lakehouse and MLflow's artifacts live in MinIO: every process that touches them sees the same bucket, the
    # endpoint and the credentials (from taxi.env), and nothing holds a lakehouse volume any more.
    assert "--artifacts-destination s3://taxi-lake/mlflow" in " ".join(services["mlflow"]["command"].split())
    assert "mb --ignore-existing lake/taxi-lake" in " ".join(services["minio-init"]["entrypoint"])
    for name in ("airflow-scheduler", "spark-worker-1", "spark-worker-2", "spark-master", "mlflow"):
        env = services[name]["environment"]
        assert env.get("AWS_ENDPOINT_URL") == "http://minio:9000", name
        assert env["AWS_SECRET_ACCESS_KEY"] == "${MINIO_ROOT_PASSWORD}", name
        assert not any(v.startswith("lakehouse:") for v in services[name].get("volumes", [])), name
    for name in ("airflow-scheduler", "spark-worker-1", "spark-master"):
        assert services[name]["environment"]["TAXI_LAKEHOUSE"] == "s3a://taxi-lake/lake", name
    assert services["airflow-init"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert "taxi jars --object-store" in (DOCKER / "Dockerfile").read_text()  # the image carries the S3A JARs
    # Many drivers commit through the DynamoDB log store: an open-source DynamoDB API, its table created before any
    # Airflow component starts, and every job process pointed at it.
    assert "--alternator-write-isolation" in services["dynamodb"]["command"]
    assert services["log-store-init"]["command"] == ["taxi", "log-store", "init"]
    assert services["airflow-init"]["depends_on"]["log-store-init"]["condition"] == "service_completed_successfully"
    for name in ("airflow-scheduler", "spark-worker-1", "log-store-init"):
        assert services[name]["environment"]["AWS_ENDPOINT_URL_DYNAMODB"] == "http://dynamodb:8000", name
    assert "openjdk-17-jdk-headless" in (DOCKER / "Dockerfile").read_text()  # javac for the log store's class


def test_images_are_pinned():
    for name, svc in _compose()["services"].items():
        image = svc["image"]
        assert ":" in image and not image.endswith(":latest"), name
    for dockerfile in ("Dockerfile", "mlflow.Dockerfile"):
        text = (DOCKER / dockerfile).read_text()
        assert re.search(r"^FROM python:3\.11\.\d+-slim-bookworm$", text, re.M), dockerfile
        for req in re.findall(r"pip install ([^\n&]*)", text):
            for pkg in req.split():
                # The project itself (its pins are pyproject's), optionally with the extras of a build argument.
                project = pkg == "." or pkg == '".${TAXI_EXTRAS:+[$TAXI_EXTRAS]}"'
                assert pkg.startswith("-") or "==" in pkg or project, f"{dockerfile}: unpinned {pkg}"
    # The MLflow server runs the version the jobs pin.
    assert '"mlflow==3.17.2"' in (ROOT / "pyproject.toml").read_text()
    assert "mlflow==3.17.2" in (DOCKER / "mlflow.Dockerfile").read_text()


def test_every_mounted_path_and_env_file_exists_and_no_secret_is_committed():
    compose = _compose()
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            src = volume.split(":")[0]
            if src.startswith((".", "/")):
                assert (DOCKER / src).exists(), f"{name}: {src}"
            else:
                assert src in compose["volumes"], f"{name}: undeclared volume {src}"
        for env_file in svc.get("env_file", []):
            assert env_file == "taxi.env" and (DOCKER / "taxi.env.example").exists()
    lines = (DOCKER / "taxi.env.example").read_text().splitlines()
    example = {line.split("=")[0] for line in lines if "=" in line and not line.startswith("#")}
    used = set(re.findall(r"\$\{(\w+)\}", (DOCKER / "compose.yaml").read_text()))
    assert used <= example, used - example
    ignored = subprocess.run(["git", "check-ignore", "docker/taxi.env"], cwd=ROOT, capture_output=True)
    assert ignored.returncode == 0  # the real env file can never be committed
    # Services that hold data require credentials: MLflow runs with basic auth, Airflow with a password file.
    assert "--app-name basic-auth" in compose["services"]["mlflow"]["command"]
    assert "SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" in json.dumps(compose["services"]["airflow-api-server"])


def test_no_secrets_in_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    pattern = re.compile(r"(AKIA[0-9A-Z]{16}|-----BEGIN (RSA |EC )?PRIVATE KEY-----|password\s*=\s*['\"][^'\"$]{6,})")
    offenders = []
    for f in files:
        path = ROOT / f
        if path.is_file() and not f.startswith("data/") and pattern.search(path.read_text(errors="ignore")):
            offenders.append(f)
    assert offenders == []
