"""The live calendar's building blocks, without a JVM: is a month's file published (a real HTTP server on loopback,
local files), when the wait gives up, and which monitor reports ask for retraining (a real Delta table)."""

from __future__ import annotations

import datetime as dt
import functools
import http.server
import socket
import threading

import pytest

from jobs.ingest import publication
from jobs.platform import lakehouse
from jobs.platform.errors import InputError

from .conftest import settings_for

DEFAULT_TIER = "unit"


@pytest.fixture()
def tlc_server(tmp_path):
    """A loopback HTTP server over a folder of TLC-named files (HEAD answers 200 for a file, 404 otherwise)."""
    root = tmp_path / "tlc"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _settings(tmp_path, template: str):
    base = settings_for(tmp_path / "lakehouse")
    data = base.data.model_copy(update={"sample_dir": tmp_path / "no-samples", "source_url_template": template})
    return base.model_copy(update={"data": data})


def test_a_month_is_published_once_its_url_answers_a_head(tmp_path, tlc_server):
    root, url = tlc_server
    settings = _settings(tmp_path, url + "/{service}_tripdata_{month}.parquet")
    status = publication.check(settings, "green", "2023-03", today=dt.date(2023, 4, 20))
    assert not status.published and status.source == f"{url}/green_tripdata_2023-03.parquet"
    assert status.deadline == dt.date(2023, 6, 29)  # 90 days after March ended, counting 1 April
    assert "not published yet" in status.message() and "2023-06-29" in status.message()
    (root / "green_tripdata_2023-03.parquet").write_bytes(b"PAR1")
    assert publication.check(settings, "green", "2023-03", today=dt.date(2023, 5, 18)).published


def test_the_wait_gives_up_after_the_deadline_naming_the_month_and_source(tmp_path, tlc_server):
    _, url = tlc_server
    settings = _settings(tmp_path, url + "/{service}_tripdata_{month}.parquet")
    with pytest.raises(publication.NotPublished) as err:
        publication.check(settings, "yellow", "2023-03", today=dt.date(2023, 6, 30))
    message = str(err.value)
    assert "yellow 2023-03" in message and "yellow_tripdata_2023-03.parquet" in message
    assert "airflow.publication_timeout_days" in message and isinstance(err.value, InputError)  # exit code 2


def test_an_unreachable_server_is_not_yet_published_rather_than_an_error(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = _settings(tmp_path, f"http://127.0.0.1:{port}/{{service}}_tripdata_{{month}}.parquet")
    assert not publication.check(settings, "green", "2023-03", today=dt.date(2023, 4, 2)).published


def test_a_local_source_is_published_when_the_file_exists_and_samples_come_first(tmp_path, settings):
    local = _settings(tmp_path, str(tmp_path / "drop" / "{service}_tripdata_{month}.parquet"))
    assert not publication.check(local, "green", "2023-03", today=dt.date(2023, 4, 2)).published
    (tmp_path / "drop").mkdir()
    (tmp_path / "drop" / "green_tripdata_2023-03.parquet").write_bytes(b"PAR1")
    assert publication.check(local, "green", "2023-03", today=dt.date(2023, 4, 2)).published
    shipped = publication.check(settings, "green", "2023-01")  # the shipped sample month: no URL asked
    assert shipped.published and shipped.source.startswith(str(settings.data.sample_dir))


def test_the_branch_reads_only_this_runs_reports_that_ask_for_retraining(tmp_path):
    import pyarrow as pa
    from deltalake import write_deltalake

    from jobs.monitoring.decisions import weeks_asking_for_retraining

    settings = settings_for(tmp_path / "lakehouse")
    assert weeks_asking_for_retraining(settings, "green", dt.datetime(2023, 1, 1, tzinfo=dt.UTC)) == []  # no table
    at = [dt.datetime(2023, 3, d, 6, tzinfo=dt.UTC) for d in (6, 13, 13, 13)]
    rows = pa.table(
        {
            "service": ["green", "green", "green", "yellow"],
            "week": ["2023-W08", "2023-W09", "2023-W10", "2023-W10"],
            "retrain": [True, False, True, True],
            "computed_at": pa.array(at, pa.timestamp("us", tz="UTC")),
        }
    )
    write_deltalake(lakehouse.DRIFT.path(settings), rows, partition_by=["service"])
    since = dt.datetime(2023, 3, 13, tzinfo=dt.UTC)  # this run started on the 13th: W08's old decision is not news
    assert weeks_asking_for_retraining(settings, "green", since) == ["2023-W10"]
    assert weeks_asking_for_retraining(settings, "green", dt.datetime(2023, 3, 14)) == []  # naive means UTC
