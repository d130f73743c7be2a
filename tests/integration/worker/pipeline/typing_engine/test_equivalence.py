"""The typing engine stages exactly what the reference SQL rules stage, and agrees with Postgres' casts.

Two levels, on random values (hypothesis) built around the hard cases: DST gaps and overlaps of
Pacific/Auckland (every transition the engine knows, from the 1920s on), leap days, the no-date sentinel,
the plausible date range's edges, whitespace (and whitespace that is not trimmed), money at the edge of
numeric(14,2), huge and tiny numbers, bad formats and arbitrary text.

1. Column level: for each contract type, the engine's verdict (`ok`) and typed value equal the SQL's
   `parse_ok` and `CASE WHEN ok THEN cast END` (contracts/sql/staging.py: Postgres' own casts, e.g.
   `v::timestamp AT TIME ZONE 'Pacific/Auckland'`, `v::numeric(14,2)`, `v::double precision`).
2. File level: a synthetic contract with one column of every type and severity, a reject domain and a
   three-column natural key with repeats. The same raw rows are staged by the SQL statements and by the
   engine (`stage_rows`); stg rows (every value, NULL and field_errors), rejects (row number, row text,
   field_errors, duplicate_key with superseded_by_row) and the dq checks must be identical.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from types import SimpleNamespace

import psycopg
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateTable, MetaData

from contracts import naming
from contracts.model import ExtractSpec
from contracts.schema import _raw_table, _rejects_table, _stg_table
from contracts.sql.staging import _cast, parse_ok, staging_sql, trimmed
from contracts.types import PLAUSIBLE_DATES, ContractType
from worker.pipeline import dq
from worker.pipeline.typing_engine import stage_rows
from worker.pipeline.typing_engine.columns import check_column
from worker.pipeline.typing_engine.localtime import transitions

pytestmark = pytest.mark.integration

SPACES = ["", " ", "\t", "\r\n", "  \n", "\u00a0", "\v"]  # the last two are not trimmed


def _local_times_near_transitions() -> list[str]:
    """Wall-clock times within 90 minutes of each Pacific/Auckland offset change since 1920."""
    boundaries, offsets = transitions()
    out = []
    for i, b in enumerate(boundaries):
        utc = datetime(1970, 1, 1) + timedelta(seconds=int(b))
        if utc.year < 1920 or utc.year > 2060:
            continue
        for off in (offsets[i], offsets[i + 1]):
            local = utc + timedelta(seconds=int(off))
            for minutes in (-90, -61, -60, -59, -30, -1, 0, 1, 29, 30, 31, 59, 60, 61, 90):
                out.append((local + timedelta(minutes=minutes)).strftime("%Y-%m-%d %H:%M:%S"))
    return out


NEAR_DST = _local_times_near_transitions()
DATE_EDGES = [
    "2024-02-29", "2025-02-29", "2000-02-29", "1900-02-29", "2100-02-29", "1904-02-29", "2025-04-31",
    "2025-06-30", "2025-12-31", "2025-13-01", "2025-00-01", "2025-01-00", "0999-01-01", "1000-01-01",
    "1899-12-31", "1900-01-01", "1900-01-02", "2099-12-31", "2100-01-01", "9999-12-31", "2025-1-01",
    "1900-01-01 00:00:00", "1900-01-01 00:00:00.000", "1900-01-01 10:00", "1900-01-01x", "1900-01-01 25:00",
    "2025-07-21 00:00:00.000", "2025-07-21 00:00:00.001", "2025-07-21T00:00", "2025-07-21 00:00",
    "2025-01-29 18:18:11.347", "2025-01-29T07:05", "2025-01-29 7:05", "2025-01-29 24:00:00",
    "2025-01-29 23:59:59.999999", "2025-01-29 23:59:59.9999999", "2025-01-29 23:60:00", "2025-09-28 02:30:00.000",
    "2025-04-06 02:30:00.000", "2025-04-06 01:59:59.999", "2025-04-06 03:00", "2099-12-31 23:59:59.999999",
    "2025-01-29 18:18:11.", "2025-01-29  18:18", "today", "2025/01/29",
]
INT_EDGES = ["0", "+0", "-0", "007", "+7", "-7", "+", "-", "+-1", "1.0", "1e3", "٣", "9" * 9, "9" * 10, "-" + "9" * 9,
             "9" * 18, "9" * 19, "-" + "9" * 18, "+" + "9" * 18, "2147483647", "x"]
BOOL_EDGES = ["0", "1", "2", "00", "true", "t", "-1", "+1"]
MONEY_EDGES = ["999999999999.994", "999999999999.995", "-999999999999.995", "999999999999.9949",
               "999999999999.99", "999999999999", "9999999999999", "0.005", "0.015", "0.025", "-0.005", "12.",
               ".5", "+1", "1.23456", "1.2345", ".", "1..2", "-.0001", "+.9999", "1e3"]
NUMERIC_EDGES = ["1.50", "1.5", "-0.0", "+.5", "9" * 28 + "." + "9" * 20, "9" * 29, "1." + "0" * 21, "0", "00.10",
                 "1e5", ".", "5."]
DOUBLE_EDGES = ["1e99", "9" * 20 + "e99", "-" + "9" * 20 + "E+99", ".5e-99", "0." + "0" * 199 + "1e-99",
                "0." + "0" * 200 + "1", "1e100", "-0", "+.5", "5.", "1.e5", ".e5", "e5", "1e", "0.1",
                "3.141592653589793238",
                "2.2250738585072014e-30", "123456789012345678901", "1_0", "inf", "NaN", "0x10"]
UUID_EDGES = ["f1416321-6b74-4211-60aa-54146584c544", "F1416321-6B74-4211-60AA-54146584C544",
              "00000000-0000-0000-0000-000000000000", "f1416321-6b74-4211-60aa-54146584c54",
              "f14163216b74421160aa54146584c544",
              "g1416321-6b74-4211-60aa-54146584c544", "{f1416321-6b74-4211-60aa-54146584c544}"]
TEXT_EDGES = ["", " ", "a", "Ngāti Whātua", "tab\there", "new\nline", "back\\slash", 'quo"te', "|^^", "~~|",
              "🙂", "\r", "  padded  ", "\\N", "null", "NULL", "\u2028"]

EDGES = {
    ContractType.BIGINT: INT_EDGES, ContractType.INTEGER: INT_EDGES, ContractType.BOOLEAN: BOOL_EDGES,
    ContractType.MONEY: MONEY_EDGES, ContractType.NUMERIC: NUMERIC_EDGES, ContractType.DOUBLE: DOUBLE_EDGES,
    ContractType.DATE: DATE_EDGES, ContractType.TIMESTAMP_NZ: DATE_EDGES, ContractType.UUID: UUID_EDGES,
    ContractType.TEXT: TEXT_EDGES,
}


@st.composite
def _timestamp_text(draw) -> str:
    base = draw(st.sampled_from(NEAR_DST)) if draw(st.booleans()) else draw(
        st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31))).strftime("%Y-%m-%d %H:%M:%S")
    sep = draw(st.sampled_from([" ", "T"]))
    base = base[:10] + sep + base[11:]
    form = draw(st.integers(0, 2))
    if form == 0:
        base = base[:16]
    elif form == 2:
        base += "." + "".join(draw(st.lists(st.sampled_from("0123456789"), min_size=1, max_size=7)))
    return base


@st.composite
def _date_text(draw) -> str:
    d = draw(st.dates(min_value=datetime(1000, 1, 1).date(), max_value=datetime(9999, 12, 31).date()))
    if draw(st.booleans()):
        d = d.replace(year=draw(st.integers(1895, 2105)))
    text = d.isoformat()
    return text + draw(st.sampled_from(["", "", " 00:00:00", " 00:00:00.000", " 00:00:00.0000001", " 10:00:00"]))


def _number_text(int_digits: int, frac_digits: int):
    digits = st.text(alphabet="0123456789", min_size=0, max_size=int_digits)
    frac = st.text(alphabet="0123456789", min_size=0, max_size=frac_digits)
    return st.builds(
        lambda sign, i, dot, f, e: sign + i + ("." + f if dot else "") + e,
        st.sampled_from(["", "", "-", "+"]), digits, st.booleans(), frac,
        st.sampled_from(["", "", "", "e5", "E-12", "e+99", "e-99", "e100"]),
    )


def _strategy(col_type: ContractType):
    edges = st.sampled_from(EDGES[col_type])
    generated = {
        ContractType.BIGINT: _number_text(20, 0), ContractType.INTEGER: _number_text(11, 0),
        ContractType.BOOLEAN: st.text(alphabet="01 2", max_size=2), ContractType.MONEY: _number_text(14, 6),
        ContractType.NUMERIC: _number_text(30, 22), ContractType.DOUBLE: _number_text(22, 40),
        ContractType.DATE: _date_text(), ContractType.TIMESTAMP_NZ: _timestamp_text(),
        ContractType.UUID: st.uuids().map(str).flatmap(lambda u: st.sampled_from([u, u.upper(), u[:-1], u + "0"])),
        ContractType.TEXT: st.text(alphabet=st.characters(blacklist_characters="\x00", codec="utf-8"), max_size=12),
    }[col_type]
    value = st.one_of(edges, generated, st.text(alphabet="0123456789-:. Te+", max_size=26),
                      st.text(alphabet=st.characters(blacklist_characters="\x00", codec="utf-8"), max_size=6))
    return st.builds(lambda pre, v, post: pre + v + post, st.sampled_from(SPACES), value, st.sampled_from(SPACES))


# -- 1. column level ------------------------------------------------------------------------------

def _sql_column(conn, col_type: ContractType, values: list[str]) -> list[tuple[bool | None, object]]:
    from contracts.model import ColumnSpec

    col = ColumnSpec(source="X", column="x", type=col_type)
    raw = sql.Identifier("t", "raw")
    v = trimmed(col, raw)
    query = sql.SQL(
        "SELECT s.ok, CASE WHEN s.ok THEN {cast} END FROM (SELECT i, {v} AS v, {ok} AS ok "
        "FROM unnest(%s::text[]) WITH ORDINALITY AS t(raw, i)) s ORDER BY s.i"
    ).format(cast=_cast(col, sql.Identifier("s", "v")), v=v, ok=parse_ok(col_type, v))
    return [(ok, value) for ok, value in conn.execute(query, (values,)).fetchall()]


def _engine_value(col_type: ContractType, value):
    if value is None:
        return None
    if col_type is ContractType.UUID:
        import uuid

        return str(uuid.UUID(bytes=value))
    return value


def _pg_value(col_type: ContractType, value):
    if value is not None and col_type is ContractType.UUID:
        return str(value)
    return value


@pytest.fixture()
def conn(migrated_db):
    with psycopg.connect(migrated_db.url) as connection:
        connection.execute("SET TIME ZONE 'UTC'")
        yield connection


def _compare_column(conn, col_type: ContractType, values: list[str]) -> None:
    expected = _sql_column(conn, col_type, values)
    checked = check_column(col_type, pa.array(values, pa.string()))
    typed = checked.typed.to_pylist()
    for i, value in enumerate(values):
        sql_ok, sql_value = expected[i]
        # (an empty value is never checked: the SQL says NULL or false, the engine false)
        assert bool(checked.ok[i]) == bool(sql_ok), (col_type, value, bool(checked.ok[i]), sql_ok)
        mine = _engine_value(col_type, typed[i])
        theirs = _pg_value(col_type, sql_value)
        if col_type is ContractType.MONEY and mine is not None:
            mine = mine.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)  # numeric(14,2)'s typmod on COPY
        if col_type is ContractType.NUMERIC and mine is not None:
            mine = Decimal(mine)  # the engine passes numeric text through; Postgres casts it on COPY
        assert mine == theirs, (col_type, value, mine, theirs)


ALL_TYPES = [t for t in ContractType]


@pytest.mark.parametrize("col_type", ALL_TYPES)
def test_edge_values_type_as_the_sql_does(conn, col_type):
    values = [pre + v + post for v in EDGES[col_type] for pre, post in (("", ""), (" ", "\r\n"), ("\t", " "))]
    if col_type is ContractType.TIMESTAMP_NZ:
        values += NEAR_DST + [t.replace(" ", "T") + ".5" for t in NEAR_DST[::7]]
    _compare_column(conn, col_type, values)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data())
def test_random_values_type_as_the_sql_does(conn, data):
    for col_type in ALL_TYPES:
        values = data.draw(st.lists(_strategy(col_type), min_size=1, max_size=60), label=col_type.value)
        _compare_column(conn, col_type, values)


# -- 2. file level --------------------------------------------------------------------------------

EQUIV = ExtractSpec(
    extract="EquivTest",
    table="equiv_test",
    file_tokens=["EquivTest"],
    natural_key=["item_id", "practice_id", "per_org_id"],
    core={"role": "fact", "table": "fact_equiv_test", "main_date": "seen_at"},
    dq={"max_reject_rate": 0.5, "min_rows_for_rates": 5, "max_null_rate": {"amount": 0.9, "seen_on": 0.9}},
    columns=[
        {"source": "ItemID", "column": "item_id", "type": "bigint", "required": True},
        {"source": "PracticeID", "column": "practice_id", "type": "integer", "required": True},
        {"source": "PerOrgID", "column": "per_org_id", "type": "bigint", "required": True},
        {"source": "SeenAt", "column": "seen_at", "type": "timestamp_nz", "required": True},
        {"source": "PatientID", "column": "patient_id", "type": "bigint", "references": "Patients"},
        {"source": "Status", "column": "status", "type": "text", "domain": "equiv_status", "unmapped": "reject"},
        {"source": "Kind", "column": "kind", "type": "text", "domain": "appointment_type"},
        {"source": "SeenOn", "column": "seen_on", "type": "date"},
        {"source": "BornOn", "column": "born_on", "type": "date", "required": True},
        {"source": "UpdatedAt", "column": "updated_at", "type": "timestamp_nz"},
        {"source": "Count", "column": "count", "type": "integer"},
        {"source": "Flag", "column": "flag", "type": "boolean"},
        {"source": "Amount", "column": "amount", "type": "money"},
        {"source": "Score", "column": "score", "type": "numeric"},
        {"source": "Lat", "column": "lat", "type": "double"},
        {"source": "Guid", "column": "guid", "type": "uuid"},
        {"source": "Notes", "column": "notes", "type": "text"},
    ],
)
MAPPED = ["Booked", "Arrived"]
DOMAIN = "equiv_status"
KEY_TEXT = st.sampled_from(["1", "01", "+1", " 1 ", "2", "3", "-0", "0", "x", "", "99999999999999999999"])
FILE_ID = 7


@pytest.fixture()
def equiv_conn(migrated_db):
    """The synthetic contract's raw, stg and rejects tables and its own reject domain (dropped after)."""
    metadata = MetaData()
    tables = [_raw_table(metadata, EQUIV), _stg_table(metadata, EQUIV), _rejects_table(metadata, EQUIV)]
    domain = sql.Identifier(naming.ETL, naming.domain_table(DOMAIN))
    with psycopg.connect(migrated_db.url) as connection:
        connection.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
            domain, sql.Identifier(naming.ETL, naming.domain_table("appointment_status"))))
        for table in tables:
            connection.execute(str(CreateTable(table).compile(dialect=postgresql.dialect())))
        for value in MAPPED:
            connection.execute(sql.SQL("INSERT INTO {} (value, label, is_mapped) VALUES (%s, %s, true)").format(domain),
                               (value, value))
        connection.commit()
        try:
            yield connection
        finally:
            connection.rollback()
            for table in [*tables, None]:
                name = domain if table is None else sql.Identifier(table.schema, table.name)
                connection.execute(sql.SQL("DROP TABLE {}").format(name))
            connection.commit()


def _row_strategy():
    fields = []
    for col in EQUIV.columns:
        if col.column in EQUIV.natural_key:
            fields.append(st.one_of(KEY_TEXT, KEY_TEXT, _strategy(col.type)))
        elif col.domain:
            values = st.sampled_from(MAPPED + ["Cancelled", "", " Booked", "booked"])
            fields.append(st.one_of(values, _strategy(col.type)))
        else:
            fields.append(_strategy(col.type))
    return st.tuples(*fields)


def _record(spec):
    return SimpleNamespace(
        file_id=FILE_ID, load_run_id=3, s3_version_id="v1", file_hash="ab" * 32,
        date_extracted=datetime(2025, 8, 19, 8, 50, tzinfo=timezone.utc),
        date_to=datetime(2025, 8, 19, 6, 33, tzinfo=timezone.utc), s3_key="k", rows_read=0, rows_raw=0,
    )


def _land(conn, rows) -> None:
    columns = ["load_file_id", "row_number", *EQUIV.column_names, "s3_bucket", "s3_key", "s3_version_id",
               "file_hash", "date_extracted", "extract_type", "load_run_id"]
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(naming.RAW, naming.raw_table(EQUIV)), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for number, row in enumerate(rows, 1):
            copy.write_row([FILE_ID, number, *row, "b", "k", "v1", "ab" * 32, "2025-08-19 08:50+00", "EquivTest", 3])


def _results(conn):
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in ["row_number", *EQUIV.column_names, "field_errors",
                                                            "s3_version_id", "file_hash", "date_extracted",
                                                            "date_to", "load_run_id"])
    stg = conn.execute(sql.SQL("SELECT {}, scale(score) FROM {} WHERE load_file_id = %s ORDER BY row_number").format(
        columns, sql.Identifier(naming.STG, naming.stg_table(EQUIV))), (FILE_ID,)).fetchall()
    rejects = conn.execute(sql.SQL(
        "SELECT row_number, row_text, field_errors, load_run_id FROM {} WHERE load_file_id = %s ORDER BY row_number"
    ).format(sql.Identifier(naming.ETL, naming.rejects_table(EQUIV))), (FILE_ID,)).fetchall()
    return stg, rejects


def _clear(conn) -> None:
    for schema, table in ((naming.STG, naming.stg_table(EQUIV)), (naming.ETL, naming.rejects_table(EQUIV))):
        conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(schema, table)))


def _by_sql(conn, record):
    statements = staging_sql(EQUIV)
    params = {"file_id": record.file_id, "run_id": record.load_run_id, "s3_version_id": record.s3_version_id,
              "file_hash": record.file_hash, "date_extracted": record.date_extracted, "date_to": record.date_to}
    pairs = conn.execute(statements.duplicates, params).fetchall()
    params["superseded"] = [p[0] for p in pairs]
    params["superseded_by"] = [p[1] for p in pairs]
    staged = conn.execute(statements.staged_insert, params).rowcount
    rejected = conn.execute(statements.rejects_insert, params).rowcount - len(pairs)
    return staged, rejected, len(pairs)


def _checks(outcome) -> list[tuple]:
    return sorted(
        (c.check_name, c.column_name or "", c.rule or "", c.passed, round(c.observed or 0, 9), c.threshold,
         repr(c.detail)) for c in outcome.checks
    )


def _stage_both_ways(conn, rows) -> None:
    record = _record(EQUIV)
    _land(conn, rows)
    record.rows_read = record.rows_raw = len(rows)
    dq.record_domain_values(conn, EQUIV, FILE_ID)
    counts_sql = _by_sql(conn, record)
    expected = _results(conn)
    outcome_sql = dq.evaluate(conn, EQUIV, FILE_ID, len(rows), *counts_sql)
    _clear(conn)
    result = stage_rows(conn, EQUIV, record)
    got = _results(conn)
    outcome_engine = dq.evaluate_counts(conn, EQUIV, FILE_ID, len(rows), result.staged, result.rejected,
                                        result.superseded, result.counts)
    assert (result.staged, result.rejected, result.superseded) == counts_sql
    assert len(got[0]) == len(expected[0]) and len(got[1]) == len(expected[1])
    for mine, theirs in zip(got[0], expected[0]):
        assert mine == theirs, (mine, theirs)
    for mine, theirs in zip(got[1], expected[1]):
        assert mine == theirs, (mine, theirs)
    assert _checks(outcome_engine) == _checks(outcome_sql)
    assert result.counts.domain_values.keys() <= {"status", "kind"}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(rows=st.lists(_row_strategy(), min_size=0, max_size=40))
def test_a_file_stages_the_same_by_engine_and_by_sql(equiv_conn, rows):
    try:
        _stage_both_ways(equiv_conn, rows)
    finally:
        equiv_conn.rollback()


def test_a_file_of_mostly_good_rows_with_repeats_stages_the_same(equiv_conn):
    rnd = random.Random(5)
    rows = []
    for i in range(400):
        key = str(rnd.choice([i, i, i, 5, 6]))
        rows.append((
            rnd.choice([key, "0" + key, "+" + key]), "535", "685146",
            rnd.choice(NEAR_DST + ["2025-01-29 18:18:11.347"]),
            rnd.choice(["", "12", "x"]), rnd.choice(MAPPED + ["Cancelled"]), rnd.choice(["A", "", "B"]),
            rnd.choice(DATE_EDGES), rnd.choice(["1970-05-06", "1900-01-01", "2025-02-29"]),
            rnd.choice(DATE_EDGES), rnd.choice(INT_EDGES), rnd.choice(BOOL_EDGES), rnd.choice(MONEY_EDGES),
            rnd.choice(NUMERIC_EDGES), rnd.choice(DOUBLE_EDGES), rnd.choice(UUID_EDGES), rnd.choice(TEXT_EDGES),
        ))
    try:
        _stage_both_ways(equiv_conn, rows)
    finally:
        equiv_conn.rollback()


def test_the_plausible_range_is_the_documented_one():
    assert PLAUSIBLE_DATES == ("1900-01-01", "2099-12-31")
