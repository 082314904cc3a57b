"""Has a month's source file been published yet?

The TLC publishes a month's trip file about two months after the month ends. A monthly Airflow run is created
when its month ends and first waits here (a task that reschedules itself: no worker slot is held between checks).
Light on purpose (standard library, plus pyarrow only for object-store URIs): the check runs every few hours.
"""

from __future__ import annotations

import datetime as dt
import logging
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from jobs.platform.config import Settings
from jobs.platform.errors import InputError
from jobs.platform.months import add_months, check_month, check_service, month_start

log = logging.getLogger("taxi.publication")
HEAD_TIMEOUT_S = 30


class NotPublished(InputError):
    """The month's source was still missing when the wait for it ran out."""


@dataclass(frozen=True)
class Publication:
    service: str
    month: str
    source: str
    published: bool
    deadline: dt.date  # the wait fails after this day

    def message(self) -> str:
        if self.published:
            return f"{self.service} {self.month}: source {self.source} is published"
        return (
            f"{self.service} {self.month}: source {self.source} is not published yet (the TLC publishes a month "
            f"about two months after it ends); waiting until {self.deadline}"
        )


def default_source(settings: Settings, service: str, month: str) -> str:
    """The shipped sample file for the month if there is one, else ``data.source_url_template``."""
    for candidate in sorted((settings.data.sample_dir / service).glob(f"{service}_tripdata_{month}*")):
        return str(candidate)
    return settings.data.source_url_template.format(service=service, month=month)


def deadline(month: str, timeout_days: int) -> dt.date:
    """The last day to wait for ``month``: ``timeout_days`` after the month ends."""
    return month_start(add_months(month, 1)) + dt.timedelta(days=timeout_days - 1)


def is_available(source: str) -> bool:
    """True when the source answers: HTTP 200 to a HEAD, or an existing local or object-store file. A missing file
    (404, or 403 as CloudFront answers for one) and a network error are both "not yet": an outage must not fail a
    wait that lasts weeks."""
    scheme = urllib.parse.urlparse(source).scheme
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(urllib.request.Request(source, method="HEAD"), timeout=HEAD_TIMEOUT_S) as r:
                return r.status == 200
        except urllib.error.HTTPError as e:
            log.info("HEAD %s: HTTP %s", source, e.code)
            return False
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            log.warning("HEAD %s failed (%s); will check again", source, e)
            return False
    if scheme in ("", "file"):
        return Path(urllib.parse.urlparse(source).path if scheme else source).is_file()
    from pyarrow import fs  # object stores (s3://, gs://, abfs://, hdfs://): pyarrow's file systems

    filesystem, path = fs.FileSystem.from_uri(source)
    return filesystem.get_file_info(path).type == fs.FileType.File


def check(settings: Settings, service: str, month: str, today: dt.date | None = None) -> Publication:
    """Where the month's source is and whether it is out; :class:`NotPublished` once the wait has run out."""
    check_service(service)
    check_month(month)
    source = default_source(settings, service, month)
    status = Publication(
        service, month, source, is_available(source), deadline(month, settings.airflow.publication_timeout_days)
    )
    if not status.published and (today or dt.date.today()) > status.deadline:
        raise NotPublished(
            f"{service} {month}: source {source} was not published within "
            f"{settings.airflow.publication_timeout_days} days after the month ended (airflow.publication_timeout_days"
            f"); check data.source_url_template, or ingest the month by hand with --source"
        )
    return status
