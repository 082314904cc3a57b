"""Month and ISO-week arithmetic, and argument checks shared by every job."""

from __future__ import annotations

import datetime as dt
import re

from jobs.platform.config import SERVICES
from jobs.platform.errors import InputError

_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
_WEEK = re.compile(r"^(\d{4})-W(0[1-9]|[1-4]\d|5[0-3])$")


def check_service(service: str) -> str:
    if service not in SERVICES:
        raise InputError(f"unknown service {service!r}: expected one of {', '.join(SERVICES)}")
    return service


def check_month(month: str) -> str:
    """``YYYY-MM`` with a real month and a plausible year; anything else (``2023-13``, ``../x``) is refused."""
    m = _MONTH.match(month or "")
    if not m or not 2009 <= int(m.group(1)) <= 2100:
        raise InputError(f"invalid month {month!r}: expected YYYY-MM, e.g. 2023-01")
    return month


def check_week(week: str) -> str:
    m = _WEEK.match(week or "")
    if not m:
        raise InputError(f"invalid week {week!r}: expected an ISO week YYYY-Www, e.g. 2023-W06")
    try:
        dt.date.fromisocalendar(int(m.group(1)), int(m.group(2)), 1)
    except ValueError as e:
        raise InputError(f"invalid week {week!r}: {e}") from e
    return week


def month_start(month: str) -> dt.date:
    y, m = map(int, month.split("-"))
    return dt.date(y, m, 1)


def add_months(month: str, n: int) -> str:
    y, m = map(int, month.split("-"))
    idx = y * 12 + (m - 1) + n
    return f"{idx // 12:04d}-{idx % 12 + 1:02d}"


def months_between(first: str, last: str) -> int:
    """Number of months from ``first`` to ``last`` inclusive."""
    (y1, m1), (y2, m2) = map(int, first.split("-")), map(int, last.split("-"))
    return (y2 - y1) * 12 + (m2 - m1) + 1


def previous_months(month: str, n: int) -> list[str]:
    """The ``n`` months before ``month``, oldest first (never ``month`` itself)."""
    return [add_months(month, -k) for k in range(n, 0, -1)]


def history_window(month: str, present: list[str], n: int, lookback: int) -> list[str]:
    """The ``n`` latest of the ``present`` months among the ``lookback`` months before ``month``, oldest first.

    With every month present this is the ``n`` months just before ``month``; a gap (a month the TLC has not
    published, or not landed here) is skipped rather than leaving the history short.
    """
    candidates = set(previous_months(month, lookback))
    return sorted(m for m in present if m in candidates)[-n:]


def month_window(until: str, n: int) -> list[str]:
    """``n`` months ending with ``until`` inclusive, oldest first."""
    return [add_months(until, -k) for k in range(n - 1, -1, -1)]


def week_bounds(week: str) -> tuple[dt.datetime, dt.datetime]:
    """[Monday 00:00, next Monday 00:00) of an ISO week."""
    y, w = week.split("-W")
    start = dt.datetime.combine(dt.date.fromisocalendar(int(y), int(w), 1), dt.time())
    return start, start + dt.timedelta(days=7)


def wall_clock(moment: dt.datetime):
    """A TIMESTAMP_NTZ literal of a naive datetime: compared with the trips' wall-clock times as it reads, with no
    time zone (``F.lit(datetime)`` would go through this machine's zone)."""
    from pyspark.sql import functions as F

    return F.lit(moment.isoformat(sep=" ")).cast("timestamp_ntz")


TRIP_TIME_ZONE = "America/New_York"  # the TLC's trip times are New York wall-clock times


def elapsed_minutes(start: str, end: str):
    """Minutes that elapsed between two wall-clock trip-time columns, through New York's offsets: a 10-minute trip
    across the spring-forward hour (01:55 EST to 03:05 EDT) is 10 minutes, not 70. In the fall-back hour both
    readings of 01:xx are possible and the earlier offset is taken."""
    from pyspark.sql import functions as F

    def instant(column: str):  # the wall clock as UTC (the session's zone), then shifted by New York's offset
        return F.unix_timestamp(F.to_utc_timestamp(F.col(column).cast("timestamp"), TRIP_TIME_ZONE))

    return (instant(end) - instant(start)) / F.lit(60.0)


def week_months(week: str) -> list[str]:
    """The month partitions a week's trips can live in (a week can straddle two months)."""
    start, end = week_bounds(week)
    last = end - dt.timedelta(seconds=1)
    return sorted({start.strftime("%Y-%m"), last.strftime("%Y-%m")})


def add_weeks(week: str, n: int) -> str:
    """The ISO week ``n`` weeks after ``week`` (negative: before)."""
    start, _ = week_bounds(week)
    year, number, _ = (start + dt.timedelta(weeks=n)).isocalendar()
    return f"{year}-W{number:02d}"
