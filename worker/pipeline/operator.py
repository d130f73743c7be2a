"""Plain functions behind the operator commands: rejects, skipped, config show|set, domains list|map.

Read commands return rows; commands that change something do it in the caller's transaction together
with their audit row in etl.operator_actions (who, when, the command, its arguments, what it replaced),
so a change and its record are committed or rolled back as one.

Nothing here returns a row's text. A reject's offending value is shown only for columns that hold no
personal data (contracts: `pii: none`); for the others it is replaced by a description of its class.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from contracts import naming
from contracts.model import PiiClass
from contracts.registry import load_all
from worker.pipeline import config_keys
from worker.pipeline.health import nz


def default_actor() -> str:
    """Who runs the command, when --by does not say: the operating-system user."""
    try:
        return getpass.getuser()
    except Exception:  # a container user without a passwd entry
        return "unknown"


def record_action(conn: psycopg.Connection, actor: str, command: str, arguments: dict[str, Any],
                  previous: Any = None) -> int:
    row = conn.execute(
        "INSERT INTO etl.operator_actions (actor, command, arguments, previous) VALUES (%s, %s, %s, %s) "
        "RETURNING action_id",
        (actor, command, Jsonb(arguments), Jsonb(previous) if previous is not None else None),
    ).fetchone()
    assert row is not None
    return int(row[0])


# -- rejects and skipped keys ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RejectLine:
    extract: str
    load_run_id: int
    file_id: int
    s3_key: str
    row_number: int
    column: str | None
    rule: str | None
    severity: str | None
    value: str | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def shown_value(extract: str, column: str | None, value: str | None) -> str | None:
    """The value when its column holds no personal data, else a description of the column's class."""
    if value is None or column is None:
        return value
    spec = load_all()[extract]
    try:
        pii = spec.column(column).pii
    except (KeyError, LookupError, ValueError):
        return "<hidden>"
    return value if pii is PiiClass.NONE else f"<hidden: {pii.value}, {len(value)} characters>"


def list_rejects(conn: psycopg.Connection, extracts: list[str], run_id: int | None, limit: int
                 ) -> tuple[list[RejectLine], dict[str, int]]:
    """(lines up to `limit` per extract, rejected rows per extract) for the extracts (all when empty)."""
    specs = load_all()
    lines: list[RejectLine] = []
    counts: dict[str, int] = {}
    for extract in extracts or sorted(specs):
        spec = specs[extract]
        table = sql.Identifier(naming.ETL, naming.rejects_table(spec))
        where = sql.SQL("WHERE r.load_run_id = %(run)s") if run_id is not None else sql.SQL("")
        count = conn.execute(sql.SQL("SELECT count(*) FROM {} r {}").format(table, where), {"run": run_id}).fetchone()
        counts[extract] = int(count[0]) if count else 0
        if not counts[extract]:
            continue
        rows = conn.execute(sql.SQL(
            """
            SELECT r.load_run_id, r.load_file_id, f.s3_key, r.row_number,
                   coalesce(e ->> 'column',
                            (SELECT string_agg(c, ', ') FROM jsonb_array_elements_text(e -> 'columns') c)),
                   e ->> 'rule', e ->> 'severity',
                   CASE WHEN e ? 'superseded_by_row' THEN 'superseded by row ' || (e ->> 'superseded_by_row')
                        ELSE e ->> 'value' END,
                   e ? 'superseded_by_row'
            FROM (SELECT * FROM {table} r {where} ORDER BY r.load_file_id, r.row_number LIMIT %(limit)s) r
            JOIN etl.load_run_files f ON f.file_id = r.load_file_id
            CROSS JOIN LATERAL jsonb_array_elements(r.field_errors) e
            ORDER BY r.load_file_id, r.row_number
            """).format(table=table, where=where), {"run": run_id, "limit": limit}).fetchall()
        for run, file_id, key, row_number, column, rule, severity, value, is_duplicate in rows:
            lines.append(RejectLine(extract, run, file_id, key, row_number, column, rule, severity,
                                    value if is_duplicate else shown_value(extract, column, value)))
    return lines, counts


def list_skipped(conn: psycopg.Connection, run_id: int | None) -> list[dict[str, Any]]:
    """Keys discovery could not parse: one line per key version and reason, with when it was seen."""
    where = sql.SQL("WHERE load_run_id = %(run)s") if run_id is not None else sql.SQL("")
    rows = conn.execute(sql.SQL(
        "SELECT s3_bucket, s3_key, s3_version_id, reason, count(*), min(seen_at), max(seen_at), max(load_run_id) "
        "FROM etl.skipped_keys {} GROUP BY 1, 2, 3, 4 ORDER BY max(seen_at) DESC, s3_key").format(where),
        {"run": run_id}).fetchall()
    return [{"s3_bucket": b, "s3_key": k, "s3_version_id": v, "reason": reason, "runs": n,
             "first_seen": nz(first), "last_seen": nz(last), "last_run_id": run}
            for b, k, v, reason, n, first, last, run in rows]


# -- configuration --------------------------------------------------------------------------------------
def config_rows(conn: psycopg.Connection, extract: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
    """The rows of etl.config; with `extract`, that extract's effective value of every known key."""
    if extract is None:
        rows = conn.execute(
            "SELECT extract, key, value, source, updated_at FROM etl.config "
            "WHERE %(key)s::text IS NULL OR key = %(key)s ORDER BY extract = '*' DESC, extract, key",
            {"key": key}).fetchall()
        return [{"extract": e, "key": k, "value": v, "source": s, "updated_at": nz(u)} for e, k, v, s, u in rows]
    stored = {(e, k): (v, s, u) for e, k, v, s, u in conn.execute(
        "SELECT extract, key, value, source, updated_at FROM etl.config WHERE extract IN (%s, '*')", (extract,)
    ).fetchall()}
    out = []
    for name, entry in sorted(config_keys.KEYS.items()):
        if key is not None and name != key:
            continue
        for where in (extract, config_keys.GLOBAL):
            if (where, name) in stored:
                value, source, updated = stored[(where, name)]
                out.append({"extract": extract, "key": name, "value": value, "source": f"{where} ({source})",
                            "updated_at": nz(updated), "meaning": entry.description})
                break
        else:
            out.append({"extract": extract, "key": name, "value": entry.default, "source": "built-in default",
                        "updated_at": None, "meaning": entry.description})
    return out


def set_config(conn: psycopg.Connection, extract: str, key: str, value: Any, actor: str) -> tuple[Any, Any]:
    """Validate and set a value as an operator (audited); returns (previous, new)."""
    spec = None if extract == config_keys.GLOBAL else load_all()[extract]
    normalised = config_keys.validate(key, extract, value, spec)
    previous_row = conn.execute("SELECT value, source FROM etl.config WHERE extract = %s AND key = %s",
                                (extract, key)).fetchone()
    previous = None if previous_row is None else {"value": previous_row[0], "source": previous_row[1]}
    conn.execute(
        "INSERT INTO etl.config (extract, key, value, source) VALUES (%s, %s, %s, 'operator') "
        "ON CONFLICT (extract, key) DO UPDATE SET value = EXCLUDED.value, source = 'operator', updated_at = now()",
        (extract, key, Jsonb(normalised)))
    record_action(conn, actor, "config set", {"extract": extract, "key": key, "value": normalised}, previous)
    return previous, normalised


# -- domains --------------------------------------------------------------------------------------------
def domain_columns() -> dict[str, list[str]]:
    """Domain -> the extract columns that use it."""
    out: dict[str, list[str]] = {}
    for spec in load_all().values():
        for col in spec.columns:
            if col.domain:
                out.setdefault(col.domain, []).append(f"{spec.extract}.{col.column}")
    return {d: sorted(c) for d, c in sorted(out.items())}


def domain_coverage(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Per domain: values seen, mapped, unmapped and the mapped share."""
    out = []
    for domain, columns in domain_columns().items():
        table = sql.Identifier(naming.ETL, naming.domain_table(domain))
        row = conn.execute(
            sql.SQL("SELECT count(*), count(*) FILTER (WHERE is_mapped) FROM {}").format(table)).fetchone()
        total, mapped = (int(row[0]), int(row[1])) if row else (0, 0)
        out.append({"domain": domain, "columns": columns, "values": total, "mapped": mapped,
                    "unmapped": total - mapped, "coverage": round(mapped / total, 4) if total else None})
    return out


def domain_values(conn: psycopg.Connection, domain: str, unmapped_only: bool = False) -> list[dict[str, Any]]:
    table = sql.Identifier(naming.ETL, naming.domain_table(domain))
    rows = conn.execute(sql.SQL(
        "SELECT d.value, d.label, d.is_mapped, d.first_seen_at, d.last_seen_at, f.s3_key FROM {} d "
        "LEFT JOIN etl.load_run_files f ON f.file_id = d.first_seen_file_id {} ORDER BY d.is_mapped, d.value"
    ).format(table, sql.SQL("WHERE NOT d.is_mapped") if unmapped_only else sql.SQL(""))).fetchall()
    return [{"value": v, "label": label, "mapped": mapped, "first_seen": nz(first), "last_seen": nz(last),
             "first_seen_in": key} for v, label, mapped, first, last, key in rows]


def map_domain_value(conn: psycopg.Connection, domain: str, value: str, label: str, actor: str
                     ) -> dict[str, Any] | None:
    """Map a value (seen or not yet) to a label (audited); returns what it replaced."""
    if not label.strip():
        raise ValueError("a mapping needs a label")
    table = sql.Identifier(naming.ETL, naming.domain_table(domain))
    before = conn.execute(sql.SQL("SELECT label, is_mapped FROM {} WHERE value = %s").format(table),
                          (value,)).fetchone()
    previous = None if before is None else {"label": before[0], "is_mapped": before[1]}
    conn.execute(sql.SQL(
        "INSERT INTO {} (value, label, is_mapped) VALUES (%s, %s, true) "
        "ON CONFLICT (value) DO UPDATE SET label = EXCLUDED.label, is_mapped = true").format(table), (value, label))
    record_action(conn, actor, "domains map", {"domain": domain, "value": value, "label": label}, previous)
    return previous
