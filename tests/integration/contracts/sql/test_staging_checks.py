"""The staging checks agree with the contract types' patterns, and a value that passes always casts.

Run in Postgres itself over many generated strings: the fast integer/boolean checks must accept exactly
what the documented patterns accept, the date checks exactly the real calendar dates, and no value that
passes a check may make its cast raise (one bad cast would abort a whole file's staging).
"""

from __future__ import annotations

import re
from datetime import date

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from contracts.sql.staging import parse_ok
from contracts.types import PLAUSIBLE_DATES, ContractType, rule_for

pytestmark = pytest.mark.integration

EDGE = ["", "0", "1", "01", "-1", "+1", "+", "-", "+-1", "--1", " 1", "1 ", "1.0", "١٢", "9" * 9, "9" * 10,
        "9" * 18, "9" * 19, "-" + "9" * 18, "+" + "9" * 19, "2", "true", "00", "1e5"]
DATES = ["2025-02-28", "2025-02-29", "2024-02-29", "1900-02-29", "2000-02-29", "2025-04-31", "2025-12-31",
         "2025-13-01", "2025-00-10", "0999-01-01", "1000-01-01", "2025-1-01", "2025-01-32",
         "2025-01-29 18:18:11.347", "2025-01-29 24:00:00", "2025-01-29 23:59:59.999999",
         "2025-01-29 23:60:00", "2025-01-29T07:05", "2025-01-29 7:05", "2025-06-31 10:00:00.000",
         "2025-07-21 00:00:00.000", "2025-07-21 00:00:00.001"]

strings = st.text(alphabet="0123456789+-. :eTa", max_size=24)


def _check(conn, col_type: ContractType, values: list[str]) -> list[tuple[str, bool | None, bool | None]]:
    v = sql.Identifier("v")
    rule = rule_for(col_type)
    query = sql.SQL("SELECT v, {fast}, v ~ {pattern} FROM unnest(%s::text[]) AS t(v) WHERE v <> ''").format(
        fast=parse_ok(col_type, v), pattern=sql.Literal(rule.pattern)
    )
    return conn.execute(query, (values,)).fetchall()


def _cast_all(conn, col_type: ContractType, values: list[str]) -> None:
    v = sql.Identifier("v")
    target = sql.SQL(rule_for(col_type).sql_type)
    cast = sql.SQL("left(v, 10)::date") if col_type is ContractType.DATE else sql.SQL("v::{}").format(target)
    conn.execute(
        sql.SQL("SELECT count(CASE WHEN {ok} THEN {cast} END) FROM unnest(%s::text[]) AS t(v) WHERE v <> ''").format(
            ok=parse_ok(col_type, v), cast=cast
        ),
        (values,),
    )


@pytest.fixture()
def conn(migrated_db):
    with psycopg.connect(migrated_db.url) as connection:
        yield connection


@pytest.mark.parametrize("col_type", [ContractType.BIGINT, ContractType.INTEGER, ContractType.BOOLEAN])
def test_fast_checks_accept_exactly_the_pattern_edge_cases(conn, col_type):
    rows = _check(conn, col_type, EDGE)
    assert rows and all(fast == pattern for _, fast, pattern in rows), [r for r in rows if r[1] != r[2]]
    _cast_all(conn, col_type, EDGE)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(strings, min_size=1, max_size=200))
def test_fast_checks_accept_exactly_the_pattern(conn, values):
    for col_type in (ContractType.BIGINT, ContractType.INTEGER, ContractType.BOOLEAN):
        rows = _check(conn, col_type, values)
        assert all(fast == pattern for _, fast, pattern in rows), [r for r in rows if r[1] != r[2]]
        _cast_all(conn, col_type, values)


def _real_calendar_date(text: str) -> bool:
    try:
        date.fromisoformat(text[:10])
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("col_type", [ContractType.DATE, ContractType.TIMESTAMP_NZ])
def test_date_checks_accept_only_real_dates_and_always_cast(conn, col_type):
    pattern = re.compile(rule_for(col_type).pattern)
    v = sql.Identifier("v")
    rows = conn.execute(
        sql.SQL("SELECT v, {} FROM unnest(%s::text[]) AS t(v)").format(parse_ok(col_type, v)), (DATES,)
    ).fetchall()
    for value, ok in rows:
        expected = (bool(pattern.match(value)) and _real_calendar_date(value)
                    and PLAUSIBLE_DATES[0] <= value[:10] <= PLAUSIBLE_DATES[1])
        assert ok == expected, value
    _cast_all(conn, col_type, DATES)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.text(alphabet="0123456789-: .T", max_size=26), min_size=1, max_size=200))
def test_no_value_that_passes_a_check_makes_its_cast_raise(conn, values):
    for col_type in (ContractType.DATE, ContractType.TIMESTAMP_NZ, ContractType.NUMERIC, ContractType.MONEY,
                     ContractType.DOUBLE):
        _cast_all(conn, col_type, values)
