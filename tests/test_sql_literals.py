"""SQL predicates are built from values in one place (jobs/platform/sql.py); quoting is checked against Spark."""

from __future__ import annotations

import pytest

from jobs.platform import sql


@pytest.mark.unit
def test_literals_quote_strings_and_leave_numbers_booleans_and_null():
    assert sql.literal("green") == "'green'"
    assert sql.literal("it's") == "'it\\'s'"
    assert sql.literal("a\\b") == "'a\\\\b'"
    assert (sql.literal(3), sql.literal(2.5), sql.literal(True), sql.literal(None)) == ("3", "2.5", "TRUE", "NULL")
    assert sql.ansi_literal("it's") == "'it''s'"
    assert sql.matches(service="green", week="2023-W06") == "service = 'green' AND week = '2023-W06'"
    assert sql.is_in("week", []) == "false"
    assert sql.identifier("a`b") == "`a``b`"


@pytest.mark.spark
def test_spark_reads_every_quoted_value_back_as_it_was(spark):
    values = ["plain", "it's", "back\\slash", "quote ' and \\ both", "2023-W06"]
    df = spark.createDataFrame([(v,) for v in values], "v string")
    for v in values:
        assert df.where(sql.matches(v=v)).count() == 1, v
    assert df.where(sql.is_in("v", values)).count() == len(values)
    assert spark.sql(f"SELECT {sql.literal(values[3])} AS v").first().v == values[3]
