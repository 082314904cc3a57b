"""SQL predicates from values, quoted in one place: every filter the jobs give Spark (``where``, Delta's
``replaceWhere``) or delta-rs's DataFusion engine is built here, never as an f-string of values."""

from __future__ import annotations

from collections.abc import Iterable


def literal(value: object) -> str:
    """A Spark SQL literal: strings quoted with backslash escapes (Spark's string syntax), numbers and booleans as
    they are, None as NULL."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def ansi_literal(value: object) -> str:
    """A standard SQL string literal (quotes doubled), for DataFusion."""
    return "'" + str(value).replace("'", "''") + "'"


def identifier(name: str) -> str:
    """A quoted identifier (a table name, or a Delta table's path as in ``delta.`<path>```)."""
    return "`" + str(name).replace("`", "``") + "`"


def delta_path(path: object) -> str:
    """The Delta table at ``path``, as Spark SQL names it: ``delta.`<path>```."""
    return f"delta.{identifier(str(path))}"


def matches(**columns: object) -> str:
    """``a = 'x' AND b = 'y'``: every column equal to its value."""
    return " AND ".join(f"{column} = {literal(value)}" for column, value in columns.items())


def is_in(column: str, values: Iterable[object]) -> str:
    """``column IN (...)``; false for no values."""
    values = list(values)
    return f"{column} IN ({', '.join(literal(v) for v in values)})" if values else "false"


def after(column: str, value: object) -> str:
    return f"{column} > {literal(value)}"
