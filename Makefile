# The README's commands. Each target creates or refreshes .venv itself when it is missing or stale.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JARS := .cache/jars/.resolved
CLASS_ARCHIVE := .cache/jars/.class-archive

export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export PYSPARK_PYTHON := $(abspath $(BIN)/python)
export PYSPARK_DRIVER_PYTHON := $(abspath $(BIN)/python)
export AIRFLOW_HOME ?= $(abspath .airflow)

# Test order: a seeded random order (module by module, tests shuffled inside) unless SEED is set; the seed is
# printed at the top of every run, so `make test SEED=<printed seed>` repeats a run exactly.
SEED ?= $(shell python3 -c 'import random; print(random.randrange(10**6))')
PYTEST_ORDER := -p random_order --random-order-bucket=module --random-order-seed=$(SEED)

.PHONY: setup demo test test-fast test-slow test-all test-deep test-reverse lint bench bench-quick bench-tune bench-writers airflow clean java help

help:
	@echo "make demo         run the whole pipeline on the shipped sample months (local Spark, ./lakehouse)"
	@echo "make test         lint (ruff) then the unit, spark and integration tiers, in a seeded random order (the gate)"
	@echo "make test-fast    lint then the unit and spark tiers (the inner loop, a few minutes)"
	@echo "make test-slow    lint then the slow tier: processes, servers, Airflow, a Spark cluster (CI runs it after make test)"
	@echo "make test-all     every tier in one run (make test + make test-slow)"
	@echo "make test-deep    install the [deep] extra (Keras 3 + JAX CPU) and run the deep challenger's tests"
	@echo "make test-reverse every tier in reverse file order (order independence)"
	@echo "make setup        create/refresh .venv and resolve the Spark JARs (the other targets do this)"
	@echo "make bench        benchmarks at 0.25M/1M/3M rows;  make bench-quick: 0.25M rows"
	@echo "make bench-tune   train --tune: two 1-slot trials at once vs one 2-slot trial at a time"
	@echo "make bench-writers four drivers committing to one S3 table at once: the DynamoDB log store vs single-driver"
	@echo "make airflow      start Airflow locally (airflow standalone) with the project's DAGs, on :8080"
	@echo "make clean        remove the lakehouse and caches (keeps .venv and the JAR cache)"

java:
	@command -v java >/dev/null || { echo "error: Java 17 is required (e.g. apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
	@java -version 2>&1 | grep -qE 'version "17\.' || { echo "error: Java 17 is required, found: $$(java -version 2>&1 | head -1)" >&2; exit 1; }
	@command -v javac >/dev/null || echo "note: no javac (a JDK, e.g. openjdk-17-jdk-headless): an s3a:// lakehouse's log store and its tests need it" >&2

$(STAMP): pyproject.toml | java
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: Python 3.11 is required" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip --version >/dev/null 2>&1 || $(BIN)/python -m ensurepip --upgrade >/dev/null
	$(BIN)/python -m pip install -q --upgrade pip uv==0.13.9
	@# Bytecode compiled once here: where Python may not write it (PYTHONDONTWRITEBYTECODE, a read-only install),
	@# every spark-submit, Airflow task and Spark Python worker would compile its imports again (GX: 8 s -> 4 s).
	$(BIN)/uv pip install -q -p $(BIN)/python --compile-bytecode -e '.[dev]'
	touch $(STAMP)

$(JARS): $(STAMP) conf/local.yaml
	$(BIN)/taxi jars >/dev/null
	touch $(JARS)

# The driver classes a Spark job loads, archived once (JVM CDS): every later driver maps them and starts faster.
$(CLASS_ARCHIVE): $(JARS)
	$(BIN)/taxi class-archive >/dev/null
	touch $(CLASS_ARCHIVE)

setup: java $(STAMP) $(JARS) $(CLASS_ARCHIVE)

demo: setup
	$(BIN)/taxi demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The gate and the inner loop run in this one process's Spark session (no child drivers to speed up), so they do
# not wait for the class archive; the slow tier starts dozens of drivers, and its archive test needs it.
test: $(JARS) lint
	$(BIN)/pytest -m "not slow" $(PYTEST_ORDER)

test-fast: $(JARS) lint
	$(BIN)/pytest -m "unit or spark" $(PYTEST_ORDER)

test-slow: setup lint
	$(BIN)/pytest -m slow $(PYTEST_ORDER)

test-all: setup lint
	$(BIN)/pytest $(PYTEST_ORDER)

# Not part of `make test`: the default install stays without the [deep] extra; CI runs this after the other tiers.
test-deep: setup lint
	$(BIN)/uv pip install -q -p $(BIN)/python --compile-bytecode -e '.[dev,deep]'
	TAXI_TEST_DEEP=required $(BIN)/pytest tests/test_deep.py

test-reverse: setup lint
	$(BIN)/pytest --reverse

bench: setup
	$(BIN)/python bench/run.py

bench-quick: setup
	$(BIN)/python bench/run.py --quick

bench-tune: setup
	$(BIN)/python bench/run.py --tune

bench-writers: setup
	$(BIN)/python bench/concurrent_writers.py --moto

airflow: setup
	@echo "Airflow UI: http://localhost:8080  login: admin, password: printed below by 'airflow standalone'"
	@echo "            (and kept in $(AIRFLOW_HOME)/simple_auth_manager_passwords.json.generated)"
	PATH="$(abspath $(BIN)):$$PATH" \
	AIRFLOW__CORE__DAGS_FOLDER="$(abspath dags)" AIRFLOW__CORE__LOAD_EXAMPLES=false \
	AIRFLOW_CONN_SPARK_DEFAULT='spark://local%5B2%5D' AIRFLOW_VAR_TAXI_JARS="$$($(BIN)/taxi jars)" \
	AIRFLOW_VAR_TAXI_DRIVER_JAVA_OPTIONS="$$($(BIN)/taxi class-archive)" \
	AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=false \
	bash -c '$(BIN)/taxi airflow-init >/dev/null && exec $(BIN)/airflow standalone'

clean:
	rm -rf lakehouse spark-warehouse metastore_db derby.log .pytest_cache .ruff_cache
