"""Contract -> the set-based statements that stage a landed file from raw into stg and rejects.

These statements are the reference definition of the staging rules. Files are staged by the vectorised
typing engine (worker/pipeline/typing_engine), whose equivalence with these statements and with
Postgres' own casts is a property test (tests/integration/worker/pipeline/typing_engine/); the stage
step runs these statements only for a contract the engine does not support.

Three statements per file, each one pass over the file's raw rows, built from the contract only:

1. `duplicates`: among the rows that pass the reject rules, the (row, superseded-by row) pairs of natural
   keys repeated later in the file (narrow: the typed key columns only). Usually empty.
2. `staged_insert`: rows that pass the reject rules and are not superseded -> stg.<t>, typed; values that
   break a nullify rule become NULL and are listed in `field_errors`.
3. `rejects_insert`: rows that break a reject rule (every failing column listed) and superseded rows ->
   etl.rejects_<t> with their row number and row text.

Parameters: file_id, run_id, s3_version_id, file_hash, date_extracted, date_to, superseded (bigint[]),
superseded_by (bigint[]). Statements 2 and 3 together write each raw row exactly once, so rows read =
staged + rejected holds by construction (and is checked by the caller).

Rules (tested in tests/integration/worker/pipeline/test_stage.py):
- Typed columns are trimmed of spaces, tabs, CR and LF before they are checked; text columns are kept
  exactly as landed. An empty value is NULL.
- `1900-01-01` (with or without a midnight time) is the source's "no date": NULL, not an error; in a
  required column it counts as missing.
- Local times are Pacific/Auckland. A time in the skipped hour of spring-forward, or in the repeated hour
  of fall-back, is read with NZ standard time (+12:00), which is what Postgres' AT TIME ZONE does.
- Values that match their pattern but cannot be stored fail their type's rule like any bad value
  (contracts/types.py): dates outside PLAUSIBLE_DATES, money rounding to 10^12 or more.
- A natural key repeated in one file keeps its last row; the earlier rows are rejected with the rule
  `duplicate_key` and the row that superseded them.

Speed: a column's check is evaluated once per row where it matters. Checks sit in a subquery fenced with
OFFSET 0 so the planner does not copy them into every expression that uses their result, and integer and
boolean checks use plain string functions instead of regular expressions (several times faster; their
equivalence with the patterns of contracts/types.py is tested against Postgres).
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from contracts import naming
from contracts.model import ColumnSpec, ExtractSpec, Severity
from contracts.types import (
    MONEY_LIMIT,
    NO_DATE_SENTINEL,
    PLAUSIBLE_DATES,
    SOURCE_TIME_ZONE,
    ContractType,
    rule_for,
)

# Whitespace trimmed from typed values before they are checked.
TRIM_CHARS = " \t\r\n"
ROW_TEXT_SEPARATOR = "|^^|"
DIGITS = "0123456789"
# Longest digit run an integer type may hold without overflowing (matches the patterns in types.py).
MAX_DIGITS = {ContractType.BIGINT: 18, ContractType.INTEGER: 9}
DATE_TYPES = (ContractType.DATE, ContractType.TIMESTAMP_NZ)


def _lit(value: str) -> sql.Literal:
    return sql.Literal(value)


def trimmed(col: ColumnSpec, raw: sql.Composable) -> sql.Composable:
    """The value that is checked: empty -> NULL; typed columns trimmed of whitespace first."""
    if col.type is ContractType.TEXT:
        return sql.SQL("nullif({}, '')").format(raw)
    return sql.SQL("nullif(btrim({}, {}), '')").format(raw, _lit(TRIM_CHARS))


def _day_exists(v: sql.Composable) -> sql.Composable:
    """True when day 29-31 of v (already matching the calendar-shaped pattern) exists in its month.

    The pattern has already bounded month and day, so only days past the 28th need this arithmetic,
    and the cheap string test in front keeps it from running for the others.
    """
    y = sql.SQL("substr({}, 1, 4)::int").format(v)
    m = sql.SQL("substr({}, 6, 2)::int").format(v)
    d = sql.SQL("substr({}, 9, 2)::int").format(v)
    return sql.SQL(
        "(substr({v}, 9, 2) <= '28' OR {d} <= CASE "
        "WHEN {m} IN (4, 6, 9, 11) THEN 30 "
        "WHEN {m} = 2 THEN CASE WHEN (mod({y}, 4) = 0 AND mod({y}, 100) <> 0) OR mod({y}, 400) = 0 "
        "THEN 29 ELSE 28 END "
        "ELSE 31 END)"
    ).format(v=v, y=y, m=m, d=d)


def _is_no_date(v: sql.Composable) -> sql.Composable:
    return sql.SQL("left({}, 10) = {}").format(v, _lit(NO_DATE_SENTINEL))


def parse_ok(col_type: ContractType, v: sql.Composable) -> sql.Composable:
    """Boolean: the (trimmed, non-NULL) value v parses as the type. NULL in, NULL out."""
    if col_type in MAX_DIGITS:
        n = MAX_DIGITS[col_type]
        return sql.SQL(
            "CASE WHEN left({v}, 1) IN ('+', '-') "
            "THEN length({v}) BETWEEN 2 AND {n1} AND ltrim(substr({v}, 2), {digits}) = '' "
            "ELSE length({v}) <= {n} AND ltrim({v}, {digits}) = '' END"
        ).format(v=v, n=sql.Literal(n), n1=sql.Literal(n + 1), digits=_lit(DIGITS))
    if col_type is ContractType.BOOLEAN:
        return sql.SQL("{} IN ('0', '1')").format(v)
    rule = rule_for(col_type)
    if rule.pattern is None:
        return sql.SQL("({} IS NOT NULL)").format(v)
    matches = sql.SQL("{} ~ {}").format(v, _lit(rule.pattern))
    if col_type in DATE_TYPES:
        in_range = sql.SQL('(left({v}, 10) COLLATE "C" BETWEEN {lo} AND {hi})').format(
            v=v, lo=_lit(PLAUSIBLE_DATES[0]), hi=_lit(PLAUSIBLE_DATES[1])
        )
        return sql.SQL("CASE WHEN {} THEN {} AND {} ELSE false END").format(matches, in_range, _day_exists(v))
    if col_type is ContractType.MONEY:
        return sql.SQL("CASE WHEN {m} THEN abs({v}::numeric) < {limit}::numeric ELSE false END").format(
            m=matches, v=v, limit=_lit(MONEY_LIMIT)
        )
    return matches


def _column_ok(col: ColumnSpec, v: sql.Composable) -> sql.Composable:
    ok = parse_ok(col.type, v)
    if col.domain and col.unmapped == "reject":
        domain = sql.Identifier(naming.ETL, naming.domain_table(col.domain))
        ok = sql.SQL("({} AND EXISTS (SELECT 1 FROM {} d WHERE d.value = {} AND d.is_mapped))").format(
            ok, domain, v
        )
    return ok


def _cast(col: ColumnSpec, v: sql.Composable) -> sql.Composable:
    """The typed value of v; only evaluated where v parsed."""
    if col.type is ContractType.TEXT:
        return v
    if col.type is ContractType.BOOLEAN:
        return sql.SQL("({} = '1')").format(v)
    if col.type is ContractType.DATE:
        return sql.SQL("CASE WHEN {no_date} THEN NULL ELSE left({v}, 10)::date END").format(
            no_date=_is_no_date(v), v=v
        )
    if col.type is ContractType.TIMESTAMP_NZ:
        return sql.SQL(
            "CASE WHEN {no_date} THEN NULL ELSE ({v}::timestamp AT TIME ZONE {tz}) END"
        ).format(no_date=_is_no_date(v), v=v, tz=_lit(SOURCE_TIME_ZONE))
    return sql.SQL("{}::{}").format(v, sql.SQL(rule_for(col.type).sql_type))


def typed_value(col: ColumnSpec, raw: sql.Composable) -> sql.Composable:
    v = trimmed(col, raw)
    return sql.SQL("CASE WHEN {} THEN {} END").format(_column_ok(col, v), _cast(col, v))


def _rule(col: ColumnSpec) -> str:
    return "unmapped_domain_value" if col.domain and col.unmapped == "reject" else rule_for(col.type).rule


def _error(col: ColumnSpec, rule: str, severity: Severity, raw: sql.Composable) -> sql.Composable:
    return sql.SQL("jsonb_build_object('column', {c}, 'rule', {r}, 'severity', {s}, 'value', {raw})").format(
        c=_lit(col.column), r=_lit(rule), s=_lit(severity.value), raw=raw
    )


def _is_checked(col: ColumnSpec) -> bool:
    """Whether a value of the column can fail at all (plain text without a reject domain cannot)."""
    return col.type is not ContractType.TEXT or bool(col.domain and col.unmapped == "reject")


def _is_key_or_required(spec: ExtractSpec, col: ColumnSpec) -> bool:
    return col.required or col.column in spec.natural_key


def _missing(col: ColumnSpec, v: sql.Composable) -> sql.Composable:
    """A required value is missing: empty, or the no-date sentinel in a date column."""
    if col.type in DATE_TYPES:
        return sql.SQL("({v} IS NULL OR {no_date})").format(v=v, no_date=_is_no_date(v))
    return sql.SQL("{} IS NULL").format(v)


def reject_condition(spec: ExtractSpec, alias: str = "r") -> sql.Composable:
    """True for a row that breaks a reject rule: a key, required or reference column missing or bad."""
    parts = []
    for col in spec.columns:
        raw = sql.Identifier(alias, col.column)
        v = trimmed(col, raw)
        if _is_key_or_required(spec, col):
            parts.append(_missing(col, v))
        if spec.severity(col) is Severity.REJECT and _is_checked(col):
            parts.append(sql.SQL("({} IS NOT NULL AND NOT {})").format(v, _column_ok(col, v)))
    return sql.SQL("(") + sql.SQL(" OR ").join(parts) + sql.SQL(")") if parts else sql.SQL("false")


def _all_errors(spec: ExtractSpec, alias: str = "r") -> sql.Composable:
    """JSON array of every failing column of a row (rule, severity and raw value), for rejects."""
    checks = []
    for col in spec.columns:
        raw = sql.Identifier(alias, col.column)
        v = trimmed(col, raw)
        if _is_checked(col):
            checks.append(
                sql.SQL("CASE WHEN {v} IS NOT NULL AND NOT {ok} THEN {err} END").format(
                    v=v, ok=_column_ok(col, v), err=_error(col, _rule(col), spec.severity(col), raw)
                )
            )
        if _is_key_or_required(spec, col):
            checks.append(
                sql.SQL("CASE WHEN {} THEN {} END").format(
                    _missing(col, v), _error(col, "required", Severity.REJECT, raw)
                )
            )
    return sql.SQL("to_jsonb(array_remove(ARRAY[{}]::jsonb[], NULL))").format(sql.SQL(", ").join(checks))


@dataclass(frozen=True)
class StagingSql:
    duplicates: sql.Composed
    staged_insert: sql.Composed
    rejects_insert: sql.Composed


def staging_sql(spec: ExtractSpec) -> StagingSql:
    raw_table = sql.Identifier(naming.RAW, naming.raw_table(spec))
    stg_table = sql.Identifier(naming.STG, naming.stg_table(spec))
    rejects_table = sql.Identifier(naming.ETL, naming.rejects_table(spec))
    reject = reject_condition(spec)
    superseded = sql.SQL(
        "unnest(%(superseded)s::bigint[], %(superseded_by)s::bigint[]) AS dup(row_number, last_row)"
    )

    keys = [spec.column(k) for k in spec.natural_key]
    duplicates = sql.SQL(
        """
SELECT row_number, last_row FROM (
    SELECT k.row_number, max(k.row_number) OVER (PARTITION BY {key_names}) AS last_row
    FROM (
        SELECT r.row_number, {typed_keys}
        FROM {raw} r
        WHERE r.load_file_id = %(file_id)s AND NOT {reject}
        OFFSET 0
    ) k
) w
WHERE row_number <> last_row
ORDER BY row_number
"""
    ).format(
        key_names=sql.SQL(", ").join(sql.Identifier("k", c.column) for c in keys),
        typed_keys=sql.SQL(", ").join(
            sql.SQL("{} AS {}").format(typed_value(c, sql.Identifier("r", c.column)), sql.Identifier(c.column))
            for c in keys
        ),
        raw=raw_table,
        reject=reject,
    )

    # Kept rows: typed values computed once in the fenced subquery; a nullified value is recognised
    # afterwards as "typed value NULL although the source had a value" (the no-date sentinel excepted).
    nullable = [c for c in spec.columns if _is_checked(c) and spec.severity(c) is Severity.NULLIFY]
    # Level 1 trims each value once; level 2 checks and casts each trimmed value once.
    trims = [sql.SQL("r.row_number")]
    for col in spec.columns:
        trims.append(sql.SQL("{} AS {}").format(trimmed(col, sql.Identifier("r", col.column)), sql.Identifier(f"v_{col.column}")))
    for col in nullable:
        trims.append(sql.SQL("r.{} AS {}").format(sql.Identifier(col.column), sql.Identifier(f"raw_{col.column}")))
    casts = [sql.SQL("t.row_number")]
    for col in spec.columns:
        v = sql.Identifier("t", f"v_{col.column}")
        casts.append(sql.SQL("CASE WHEN {} THEN {} END AS {}").format(_column_ok(col, v), _cast(col, v), sql.Identifier(col.column)))
    for col in nullable:
        casts.append(sql.SQL("t.{} AS {}").format(sql.Identifier(f"v_{col.column}"), sql.Identifier(f"v_{col.column}")))
        casts.append(sql.SQL("t.{} AS {}").format(sql.Identifier(f"raw_{col.column}"), sql.Identifier(f"raw_{col.column}")))
    # A nullified value is recognised afterwards as "typed value NULL although the source had a value"
    # (the no-date sentinel excepted).
    nullified = []
    for col in nullable:
        v = sql.Identifier("s", f"v_{col.column}")
        condition = sql.SQL("s.{} IS NULL AND {} IS NOT NULL").format(sql.Identifier(col.column), v)
        if col.type in DATE_TYPES:
            condition = sql.SQL("{} AND NOT {}").format(condition, _is_no_date(v))
        nullified.append((condition, _error(col, _rule(col), Severity.NULLIFY, sql.Identifier("s", f"raw_{col.column}"))))
    if nullified:
        field_errors = sql.SQL("CASE WHEN {any} THEN to_jsonb(array_remove(ARRAY[{each}]::jsonb[], NULL)) END").format(
            any=sql.SQL(" OR ").join(sql.SQL("({})").format(c) for c, _ in nullified),
            each=sql.SQL(", ").join(sql.SQL("CASE WHEN {} THEN {} END").format(c, e) for c, e in nullified),
        )
    else:
        field_errors = sql.SQL("NULL::jsonb")
    columns = [sql.Identifier(c.column) for c in spec.columns]
    staged_insert = sql.SQL(
        """
INSERT INTO {stg} (load_file_id, row_number, {columns}, field_errors,
                   s3_version_id, file_hash, date_extracted, date_to, load_run_id)
SELECT %(file_id)s, s.row_number, {s_columns}, {field_errors},
       %(s3_version_id)s, %(file_hash)s, %(date_extracted)s, %(date_to)s, %(run_id)s
FROM (
    SELECT {casts}
    FROM (
        SELECT {trims}
        FROM {raw} r
        LEFT JOIN {superseded} ON dup.row_number = r.row_number
        WHERE r.load_file_id = %(file_id)s AND dup.row_number IS NULL AND NOT {reject}
        OFFSET 0
    ) t
    OFFSET 0
) s
"""
    ).format(
        stg=stg_table,
        columns=sql.SQL(", ").join(columns),
        s_columns=sql.SQL(", ").join(sql.Identifier("s", c.column) for c in spec.columns),
        field_errors=field_errors,
        casts=sql.SQL(", ").join(casts),
        trims=sql.SQL(", ").join(trims),
        raw=raw_table,
        superseded=superseded,
        reject=reject,
    )

    rejects_insert = sql.SQL(
        """
INSERT INTO {rejects} (load_file_id, row_number, load_run_id, row_text, field_errors)
SELECT %(file_id)s, r.row_number, %(run_id)s, array_to_string(ARRAY[{raw_fields}], {sep}),
       CASE WHEN dup.last_row IS NOT NULL THEN jsonb_build_array(jsonb_build_object(
                'rule', 'duplicate_key', 'severity', 'reject', 'columns', {key_list},
                'superseded_by_row', dup.last_row))
            ELSE {errors} END
FROM {raw} r
LEFT JOIN {superseded} ON dup.row_number = r.row_number
WHERE r.load_file_id = %(file_id)s AND (dup.row_number IS NOT NULL OR {reject})
"""
    ).format(
        rejects=rejects_table,
        raw_fields=sql.SQL(", ").join(sql.Identifier("r", c.column) for c in spec.columns),
        sep=_lit(ROW_TEXT_SEPARATOR),
        key_list=sql.SQL("jsonb_build_array({})").format(sql.SQL(", ").join(_lit(k) for k in spec.natural_key)),
        errors=_all_errors(spec),
        raw=raw_table,
        superseded=superseded,
        reject=reject,
    )
    return StagingSql(duplicates, staged_insert, rejects_insert)
