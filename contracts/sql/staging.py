"""Contract -> the one set-based statement that stages a landed file from raw into stg and rejects.

The statement reads `raw.<t>_raw` rows of one file, checks every column against its contract type in a
single pass, collects *every* error of a row into one JSON array, and splits the result: rows with a
reject-severity error (keys, required columns, references) or a key superseded later in the same file go
to `etl.rejects_<t>`; the others go to `stg.<t>` with their nullified values listed in `field_errors`.

Parameters: file_id, run_id, s3_version_id, file_hash, date_extracted, date_to (psycopg named params).
It returns one row: (rejected, superseded, staged).

Rules (documented in docs/STAGING.md, tested in tests/integration/worker/pipeline/test_stage.py):
- Typed columns are trimmed of spaces, tabs, CR and LF before they are checked; text columns are kept
  exactly as landed. An empty value is NULL.
- `1900-01-01` (with or without a midnight time) is the source's "no date": NULL, not an error.
- Local times are Pacific/Auckland. A time in the skipped hour of spring-forward, or in the repeated hour
  of fall-back, is read with NZ standard time (+12:00), which is what Postgres' AT TIME ZONE does.
- A natural key repeated in one file keeps its last row; the earlier rows are rejected with the rule
  `duplicate_key` and the row that superseded them, so rows read = staged + rejected always holds.
"""

from __future__ import annotations

from psycopg import sql

from contracts import naming
from contracts.model import ColumnSpec, ExtractSpec, Severity
from contracts.types import NO_DATE_SENTINEL, SOURCE_TIME_ZONE, ContractType, rule_for

# Whitespace trimmed from typed values before they are checked.
TRIM_CHARS = " \t\r\n"
ROW_TEXT_SEPARATOR = "|^^|"


def _lit(value: str) -> sql.Literal:
    return sql.Literal(value)


def _valid_ymd(v: sql.Composable) -> sql.Composable:
    """True when the first 10 characters of v (already matching ####-##-##) are a real calendar date."""
    y = sql.SQL("substr({}, 1, 4)::int").format(v)
    m = sql.SQL("substr({}, 6, 2)::int").format(v)
    d = sql.SQL("substr({}, 9, 2)::int").format(v)
    return sql.SQL(
        "({y} >= 1 AND {m} BETWEEN 1 AND 12 AND {d} BETWEEN 1 AND CASE "
        "WHEN {m} IN (4, 6, 9, 11) THEN 30 "
        "WHEN {m} = 2 THEN CASE WHEN (mod({y}, 4) = 0 AND mod({y}, 100) <> 0) OR mod({y}, 400) = 0 THEN 29 ELSE 28 END "
        "ELSE 31 END)"
    ).format(y=y, m=m, d=d)


def _valid_hms(v: sql.Composable) -> sql.Composable:
    """True when characters 12-19 of v (already matching the timestamp pattern) are a real time of day."""
    return sql.SQL(
        "(substr({v}, 12, 2)::int <= 23 AND substr({v}, 15, 2)::int <= 59 "
        "AND (length({v}) < 19 OR substr({v}, 18, 2)::int <= 59))"
    ).format(v=v)


def _is_no_date(v: sql.Composable) -> sql.Composable:
    return sql.SQL("left({}, 10) = {}").format(v, _lit(NO_DATE_SENTINEL))


def _parse_ok(col: ColumnSpec, v: sql.Composable) -> sql.Composable:
    """Boolean expression: the (trimmed, non-empty) value v parses as the column's type."""
    rule = rule_for(col.type)
    if rule.pattern is None:
        return sql.SQL("true")
    matches = sql.SQL("{} ~ {}").format(v, _lit(rule.pattern))
    if col.type is ContractType.DATE:
        return sql.SQL("CASE WHEN {} THEN {} ELSE false END").format(matches, _valid_ymd(v))
    if col.type is ContractType.TIMESTAMP_NZ:
        return sql.SQL("CASE WHEN {} THEN {} AND {} ELSE false END").format(
            matches, _valid_ymd(v), _valid_hms(v)
        )
    return matches


def _cast(col: ColumnSpec, v: sql.Composable) -> sql.Composable:
    """The typed value of v, evaluated only where the value parsed."""
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


def _error(col: ColumnSpec, rule: str, severity: Severity) -> sql.Composable:
    return sql.SQL(
        "jsonb_build_object('column', {c}, 'rule', {r}, 'severity', {s}, 'value', {raw})"
    ).format(
        c=_lit(col.column),
        r=_lit(rule),
        s=_lit(severity.value),
        raw=sql.Identifier("c", col.column),
    )


def staging_statement(spec: ExtractSpec) -> sql.Composed:
    """The statement that stages one landed file (see the module docstring)."""
    raw = sql.Identifier(naming.RAW, naming.raw_table(spec))
    stg = sql.Identifier(naming.STG, naming.stg_table(spec))
    rejects = sql.Identifier(naming.ETL, naming.rejects_table(spec))

    def v(col: ColumnSpec) -> sql.Identifier:  # the trimmed value in CTE t
        return sql.Identifier(f"v_{col.column}")

    def ok(col: ColumnSpec) -> sql.Identifier:  # parse flag in CTE c
        return sql.Identifier(f"ok_{col.column}")

    trimmed, flags, typed, checks, reject_conditions = [], [], [], [], []
    for col in spec.columns:
        source = sql.Identifier("r", col.column)
        if col.type is ContractType.TEXT:
            trimmed.append(sql.SQL("nullif({}, '') AS {}").format(source, v(col)))
        else:
            trimmed.append(
                sql.SQL("nullif(btrim({}, {}), '') AS {}").format(source, _lit(TRIM_CHARS), v(col))
            )
        parse_ok = _parse_ok(col, v(col))
        if col.domain and col.unmapped == "reject":
            domain = sql.Identifier(naming.ETL, naming.domain_table(col.domain))
            parse_ok = sql.SQL("({} AND EXISTS (SELECT 1 FROM {} d WHERE d.value = {} AND d.is_mapped))").format(
                parse_ok, domain, v(col)
            )
        flags.append(sql.SQL("({} IS NULL OR {}) AS {}").format(v(col), parse_ok, ok(col)))
        typed.append(
            sql.SQL("CASE WHEN {ok} THEN {cast} END AS {name}").format(
                ok=ok(col), cast=_cast(col, v(col)), name=sql.Identifier(col.column)
            )
        )
        severity = spec.severity(col)
        rule = "unmapped_domain_value" if col.domain and col.unmapped == "reject" else rule_for(col.type).rule
        checks.append(sql.SQL("CASE WHEN NOT {} THEN {} END").format(ok(col), _error(col, rule, severity)))
        if col.required or col.column in spec.natural_key:
            checks.append(
                sql.SQL("CASE WHEN {} IS NULL THEN {} END").format(
                    v(col), _error(col, "required", Severity.REJECT)
                )
            )
            reject_conditions.append(sql.SQL("{} IS NULL").format(v(col)))
        if severity is Severity.REJECT:
            reject_conditions.append(sql.SQL("NOT {}").format(ok(col)))
        # A required date that is the "no date" sentinel is as missing as an empty one.
        if (col.required or col.column in spec.natural_key) and col.type in (
            ContractType.DATE,
            ContractType.TIMESTAMP_NZ,
        ):
            no_date = sql.SQL("({} AND {} IS NOT NULL AND {})").format(ok(col), v(col), _is_no_date(v(col)))
            checks.append(sql.SQL("CASE WHEN {} THEN {} END").format(no_date, _error(col, "required", Severity.REJECT)))
            reject_conditions.append(no_date)

    all_ok = sql.SQL(" AND ").join(ok(c) for c in spec.columns)
    keys = [sql.Identifier(k) for k in spec.natural_key]
    stg_columns = [sql.Identifier(c.column) for c in spec.columns]
    raw_fields = sql.SQL(", ").join(sql.Identifier("r", c.column) for c in spec.columns)
    key_list = sql.SQL("jsonb_build_array({})").format(sql.SQL(", ").join(_lit(k) for k in spec.natural_key))

    return sql.SQL(
        """
WITH t AS (
    SELECT r.row_number, {raw_fields}, {trimmed}
    FROM {raw} r
    WHERE r.load_file_id = %(file_id)s
), c AS (
    SELECT t.*, {flags} FROM t
), f AS (
    SELECT c.row_number, {typed},
           ({reject}) AS is_reject,
           CASE WHEN NOT ({all_ok}) OR ({reject}) THEN
               to_jsonb(array_remove(ARRAY[{checks}]::jsonb[], NULL))
           END AS errors
    FROM c
), d AS (
    SELECT f.*, max(f.row_number) OVER (PARTITION BY f.is_reject, {keys}) AS last_row FROM f
), rejected AS (
    INSERT INTO {rejects} (load_file_id, row_number, load_run_id, row_text, field_errors)
    SELECT %(file_id)s, d.row_number, %(run_id)s, array_to_string(ARRAY[{raw_fields}], {sep}),
           CASE WHEN d.is_reject THEN d.errors
                ELSE jsonb_build_array(jsonb_build_object(
                    'rule', 'duplicate_key', 'severity', 'reject', 'columns', {key_list},
                    'superseded_by_row', d.last_row))
           END
    FROM d JOIN {raw} r ON r.load_file_id = %(file_id)s AND r.row_number = d.row_number
    WHERE d.is_reject OR d.row_number <> d.last_row
    RETURNING (field_errors -> 0 ->> 'rule') = 'duplicate_key' AS superseded
), staged AS (
    INSERT INTO {stg} (load_file_id, row_number, {stg_columns}, field_errors,
                       s3_version_id, file_hash, date_extracted, date_to, load_run_id)
    SELECT %(file_id)s, d.row_number, {d_columns}, d.errors,
           %(s3_version_id)s, %(file_hash)s, %(date_extracted)s, %(date_to)s, %(run_id)s
    FROM d
    WHERE NOT d.is_reject AND d.row_number = d.last_row
    RETURNING 1
)
SELECT (SELECT count(*) FROM rejected WHERE NOT superseded) AS rejected,
       (SELECT count(*) FROM rejected WHERE superseded) AS superseded,
       (SELECT count(*) FROM staged) AS staged
"""
    ).format(
        trimmed=sql.SQL(", ").join(trimmed),
        raw=raw,
        flags=sql.SQL(", ").join(flags),
        typed=sql.SQL(", ").join(typed),
        reject=sql.SQL(" OR ").join(reject_conditions) if reject_conditions else sql.SQL("false"),
        all_ok=all_ok,
        checks=sql.SQL(", ").join(checks),
        keys=sql.SQL(", ").join(keys),
        rejects=rejects,
        sep=_lit(ROW_TEXT_SEPARATOR),
        raw_fields=raw_fields,
        key_list=key_list,
        stg=stg,
        stg_columns=sql.SQL(", ").join(stg_columns),
        d_columns=sql.SQL(", ").join(sql.Identifier("d", c.column) for c in spec.columns),
    )
