"""`indici-ingest trace TABLE KEY...`: from a core row back to the files and runs it came from.

For one natural key of one core table (or extract), it returns:
- core: every version of the row (validity, flags, lineage; attributes are left out, they may be PII),
  and for facts the dimension versions its FKs point at (natural key + effective_from);
- stg: every staged version of the key (file, row number, DateExtracted, DateTo, file status), marked
  when it is the version that gave a core row its values;
- raw: the raw rows holding the key (file id, row number, whether staged or rejected, reject errors);
- files: the etl.load_run_files rows involved (bucket, key, version id, hash, status ...);
- runs: the etl.load_runs rows involved.
Values are JSON-ready (timestamps as text, '-infinity' included).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import psycopg
from psycopg import sql

from contracts import naming
from contracts.model import ExtractSpec
from contracts.registry import load_all
from contracts.sql.merge import LINEAGE, references
from contracts.types import rule_for

FILE_FIELDS = ("file_id", "load_run_id", "extract", "s3_bucket", "s3_key", "s3_version_id", "file_hash",
               "per_org_id", "practice_id", "date_from", "date_to", "date_extracted", "status", "encoding",
               "rows_read", "rows_staged", "rows_rejected", "error", "landed_at", "staged_at", "merged_at")
RUN_FIELDS = ("load_run_id", "kind", "status", "params", "started_at", "finished_at", "error")


def resolve(table: str) -> ExtractSpec:
    """A spec from a core table (dim_patient, core.dim_patient), stg table, or extract name."""
    wanted = table.lower().removeprefix("core.").removeprefix("stg.")
    for spec in load_all().values():
        if wanted in (spec.core.table, spec.table, spec.extract.lower()):
            return spec
    raise KeyError(f"no core table or extract named {table!r}")


def check_key(spec: ExtractSpec, values: Sequence[str]) -> None:
    """ValueError naming the first key value that its column's type cannot hold (before any query)."""
    for name, value in zip(spec.natural_key, values):
        rule = rule_for(spec.column(name).type)
        if rule.pattern is not None and not re.match(rule.pattern, str(value).strip()):
            raise ValueError(f"{value!r} is not a valid {name} (a {rule.sql_type}); the key of {spec.core.table} "
                             f"is {', '.join(spec.natural_key)}")


def _key_condition(spec: ExtractSpec, alias: str, values: Sequence[str]) -> sql.Composable:
    return sql.SQL(" AND ").join(
        sql.SQL("{} = CAST({} AS {})").format(
            sql.Identifier(alias, name), sql.Literal(str(value)), sql.SQL(rule_for(spec.column(name).type).sql_type)
        )
        for name, value in zip(spec.natural_key, values)
    )


def _json_rows(conn: psycopg.Connection, query: sql.Composable, params=None) -> list[dict[str, Any]]:
    return [r[0] for r in conn.execute(query, params).fetchall()]


def _pick(alias: str, fields: Sequence[str]) -> sql.Composable:
    return sql.SQL("jsonb_build_object({})").format(
        sql.SQL(", ").join(sql.SQL("{}, {}").format(sql.Literal(f), sql.Identifier(alias, f)) for f in fields)
    )


def trace(conn: psycopg.Connection, table: str, key_values: Sequence[str]) -> dict[str, Any]:
    spec = resolve(table)
    if len(key_values) != len(spec.natural_key):
        raise ValueError(f"{spec.core.table} needs {len(spec.natural_key)} key values: {', '.join(spec.natural_key)}")
    check_key(spec, key_values)
    core = sql.Identifier(naming.CORE, spec.core.table)
    skey = naming.surrogate_key(spec.core.table)
    if spec.is_dimension:
        meta = [skey, "effective_from", "effective_to", "is_current", "is_inferred", "is_removed", *LINEAGE, "merged_at"]
        order = sql.SQL("t.effective_from")
    else:
        fks = [r.fk for r in references(spec, load_all())]
        meta = [skey, *fks, "date_key", "is_removed", "removed_at", *LINEAGE, "merged_at"]
        order = sql.SQL("t.{}").format(sql.Identifier(skey))
    core_rows = _json_rows(conn, sql.SQL("SELECT {} FROM {} t WHERE {} ORDER BY {}").format(
        _pick("t", meta), core, _key_condition(spec, "t", key_values), order))

    specs = load_all()
    for ref in references(spec, specs):
        target = ref.target
        for row in core_rows:
            found = _json_rows(conn, sql.SQL("SELECT {} FROM {} d WHERE d.{} = %s").format(
                _pick("d", [*target.natural_key, "effective_from", "is_inferred"]),
                sql.Identifier(naming.CORE, target.core.table),
                sql.Identifier(naming.surrogate_key(target.core.table))), (row.get(ref.fk),))
            row.setdefault("references", {})[ref.fk] = {"table": target.core.table, "version": found[0] if found else None}
    sources = {(r["load_file_id"], r["row_number"]) for r in core_rows}

    stg = sql.Identifier(naming.STG, naming.stg_table(spec))
    stg_rows = _json_rows(conn, sql.SQL(
        "SELECT {} || jsonb_build_object('file_status', f.status) FROM {} s "
        "LEFT JOIN etl.load_run_files f ON f.file_id = s.load_file_id WHERE {} "
        "ORDER BY s.date_extracted, s.date_to, s.row_number, s.file_hash").format(
        _pick("s", ["load_file_id", "row_number", "date_extracted", "date_to", "file_hash", "s3_version_id",
                    "load_run_id", "staged_at"]), stg, _key_condition(spec, "s", key_values)))
    for row in stg_rows:
        row["gave_core_values"] = (row["load_file_id"], row["row_number"]) in sources

    raw = sql.Identifier(naming.RAW, naming.raw_table(spec))
    rejects = sql.Identifier(naming.ETL, naming.rejects_table(spec))
    raw_match = sql.SQL(" AND ").join(
        sql.SQL("btrim(r.{}) = {}").format(sql.Identifier(name), sql.Literal(str(value).strip()))
        for name, value in zip(spec.natural_key, key_values)
    )
    raw_rows = _json_rows(conn, sql.SQL(
        "SELECT jsonb_build_object('load_file_id', r.load_file_id, 'row_number', r.row_number, "
        "'staged', EXISTS (SELECT 1 FROM {stg} s WHERE s.load_file_id = r.load_file_id AND s.row_number = r.row_number), "
        "'reject_errors', (SELECT j.field_errors FROM {rej} j WHERE j.load_file_id = r.load_file_id "
        "AND j.row_number = r.row_number)) FROM {raw} r WHERE {match} ORDER BY r.load_file_id, r.row_number").format(
        stg=stg, rej=rejects, raw=raw, match=raw_match))

    file_ids = sorted({r["load_file_id"] for r in (*core_rows, *stg_rows, *raw_rows)})
    files = _json_rows(conn, sql.SQL("SELECT {} FROM etl.load_run_files f WHERE f.file_id = ANY(%s) ORDER BY f.file_id").format(
        _pick("f", FILE_FIELDS)), (file_ids,))
    run_ids = sorted({r["load_run_id"] for r in (*core_rows, *stg_rows, *files)})
    runs = _json_rows(conn, sql.SQL("SELECT {} FROM etl.load_runs l WHERE l.load_run_id = ANY(%s) ORDER BY l.load_run_id").format(
        _pick("l", RUN_FIELDS)), (run_ids,))
    return {
        "table": f"{naming.CORE}.{spec.core.table}",
        "extract": spec.extract,
        "key": dict(zip(spec.natural_key, key_values)),
        "core": core_rows,
        "stg": stg_rows,
        "raw": raw_rows,
        "files": files,
        "runs": runs,
    }
