"""The drivers' class-data-sharing archive (`taxi class-archive`, built by `make setup`): an option string only when
the archive is there and wanted, and a driver JVM that really maps it (a JVM that rejected the archive, e.g. for a
class path it was not dumped with, would start without it and silently lose the speed-up)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.platform.class_archive import archive_path, driver_java_options
from jobs.platform.config import load_settings

from .conftest import settings_for

DEFAULT_TIER = "unit"


def test_the_options_name_the_archive_only_when_it_exists_and_is_wanted(tmp_path):
    s = settings_for(tmp_path / "lakehouse")
    s.spark.jar_cache = tmp_path / "jars"
    assert driver_java_options(s) == ""  # no archive yet: drivers start as they always did
    archive_path(s).parent.mkdir()
    archive_path(s).write_bytes(b"")
    options = driver_java_options(s).split()
    assert options[0] == f"-XX:SharedArchiveFile={archive_path(s)}" and "-Xshare:auto" in options
    s.spark.class_archive = False
    assert driver_java_options(s) == ""
    s.spark.driver_java_options = " -XX:TieredStopAtLevel=1 "  # configured options: after the archive's, or alone
    assert driver_java_options(s) == "-XX:TieredStopAtLevel=1"
    s.spark.class_archive = True
    assert driver_java_options(s).split()[0].startswith("-XX:SharedArchiveFile=")
    assert driver_java_options(s).endswith("-Xlog:cds+dynamic=off -XX:TieredStopAtLevel=1")
    cleared = load_settings(env={"TAXI__SPARK__DRIVER_JAVA_OPTIONS": "", "TAXI_LAKEHOUSE": str(tmp_path / "lake")})
    assert cleared.spark.driver_java_options == ""  # an empty override clears them


@pytest.mark.slow  # the archive is built by `make setup`, which the slow tier's targets run (not `make test`)
def test_the_test_sessions_driver_maps_the_archive(spark, settings):
    path = archive_path(settings)
    assert path.exists(), f"{path} is missing: `make setup` (or `taxi class-archive`) builds it"
    jvm_pid = spark.sparkContext._jvm.ProcessHandle.current().pid()
    mapped = {line.split()[-1] for line in Path(f"/proc/{jvm_pid}/maps").read_text().splitlines() if "/" in line}
    assert str(path) in mapped, "the driver JVM started without the class archive (it did not match this JVM)"
