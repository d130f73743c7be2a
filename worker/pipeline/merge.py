"""Merge: stg -> core. Dimensions as SCD2 (validity from DateExtracted), facts newest-wins with FKs.

Plain functions over a connection (no Celery). The SQL is generated from the contracts by
contracts/sql/merge.py (see its docstring for the rules); this module orders the statements, hashes
NHIs in Python (the HMAC key never reaches Postgres), and keeps the ledger.

- `merge_extract(conn, spec, file_ids, settings)`: one extract, a handful of set-based statements; runs in
  the caller's transaction.
- `merge_run(conn, run_id, settings)`: every 'staged' file of the run (and staged files that earlier,
  finished runs left unmerged), dimensions first then facts, in ONE transaction under the run-wide
  MERGE advisory lock (two runs never merge at once); files become 'merged' with merged_at; per-extract
  counts of invalid NHIs and inferred members go to etl.dq_results.
- `ensure_dim_date(conn, first, last)`.

Configuration read from etl.config (worker.pipeline.config.get_value):
- 'full_file_deletes' (boolean, per extract or '*', default false): whether full files remove rows.
- 'full_batches' (JSON list of DateExtracted strings 'yyMMddHHmm', NZ local, per extract or '*'): which
  batches are full extracts. Only a full file of an extract with deletes enabled removes rows.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import date
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from contracts import naming
from contracts.model import ExtractSpec
from contracts.registry import get as get_spec
from contracts.registry import load_all
from contracts.sql import merge as M
from worker.log import bound, get_logger
from worker.pipeline import config, ledger, nhi_keys
from worker.pipeline.identity import ConfigurationError, nhi_hash, nhi_is_valid, normalise_nhi
from worker.pipeline.nhi_keys import ActiveKey
from worker.pipeline.ledger import LockSpace

log = get_logger(__name__)

__all__ = ["MergeResult", "merge_extract", "merge_run", "ensure_dim_date", "ConfigurationError"]


@dataclass
class MergeResult:
    extract: str
    core_table: str
    files: int
    inserted: int = 0
    updated: int = 0
    deleted: int = 0  # obsolete dimension versions removed (superseded history, replaced inferred rows)
    repointed: int = 0  # fact FKs moved to another dimension version
    inferred: dict[str, int] = field(default_factory=dict)  # target extract -> inferred members created
    removed: int = 0  # fact rows whose removal state changed (deletes)
    nhi_invalid: int = 0
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step, for tuning

    def timed(self, step: str, started: float) -> None:
        self.steps[step] = round(self.steps.get(step, 0.0) + time.monotonic() - started, 4)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- statements (cached per extract) --------------------------------------------------------------------
@lru_cache(maxsize=None)
def _dim_statements(extract: str) -> dict[str, Any]:
    specs = load_all()
    spec = specs[extract]
    return {
        "affected": M.dim_affected_statement(spec),
        "desired": M.dim_desired_statement(spec),
        "clear": M.dim_clear_current_statement(spec),
        "upsert": M.dim_upsert_statement(spec),
        "repoint": [M.dim_repoint_statement(spec, fact, ref) for fact, ref in M.referencing(spec, specs)],
        "delete": M.dim_delete_obsolete_statement(spec),
    }


@lru_cache(maxsize=None)
def _fact_statements(extract: str) -> dict[str, Any]:
    specs = load_all()
    spec = specs[extract]
    return {
        "range": M.fact_date_range_statement(spec),
        "inferred": M.inferred_statements(spec, specs),
        "upsert": M.fact_upsert_statement(spec, specs),
        "removal": M.fact_removal_statement(spec),
    }


# -- helpers ------------------------------------------------------------------------------------------
def ensure_dim_date(conn: psycopg.Connection, first: date, last: date) -> None:
    """core.dim_date holds every day of [first, last] (idempotent)."""
    if first is None or last is None:
        return
    if first > last:
        first, last = last, first
    conn.execute(M.ensure_dim_date_statement(), {"first": first, "last": last})


def _delete_settings(conn: psycopg.Connection, spec: ExtractSpec) -> tuple[bool, list[str]]:
    enabled = config.get_value(conn, spec.extract, "full_file_deletes", False)
    batches = config.get_value(conn, spec.extract, "full_batches", []) or []
    if isinstance(batches, str):
        batches = [batches]
    return bool(enabled) and bool(batches), [str(b) for b in batches]


def _load_nhis(conn: psycopg.Connection, spec: ExtractSpec, key: ActiveKey, params: dict[str, Any]) -> None:
    """Hash the distinct NHI values in scope in Python and COPY (value, hash, valid, key version) into
    merge_nhi. One SELECT DISTINCT, one COPY; no value is logged."""
    for statement in M.nhi_temp_table():
        conn.execute(statement)
    values = [row[0] for row in conn.execute(M.nhi_values_statement(spec), params)]
    with conn.cursor() as cur, cur.copy(M.nhi_copy()) as copy:
        for value in values:
            normalised = normalise_nhi(value)
            hashed = nhi_hash(key.key, normalised)
            copy.write_row((value, hashed, None if normalised is None else nhi_is_valid(normalised),
                            None if hashed is None else key.version))
    conn.execute("ANALYZE merge_nhi")


# -- merges -------------------------------------------------------------------------------------------
def merge_extract(conn: psycopg.Connection, spec: ExtractSpec, file_ids: list[int], settings) -> MergeResult:
    """Merge the stg rows of `file_ids` (files of extract `spec`) into core. Runs in the caller's
    transaction; the caller holds the MERGE lock and marks the files merged."""
    started = time.monotonic()
    file_ids = sorted({int(f) for f in file_ids})
    result = MergeResult(spec.extract, spec.core.table, len(file_ids))
    if not file_ids:
        return result
    # The key core is hashed with (a configuration error when the configured keys do not include it).
    key = nhi_keys.key_for_merge(conn, settings, spec.extract) if M.nhi_columns(spec) else None
    deletes, full_batches = _delete_settings(conn, spec)
    params = {"files": file_ids, "extract": spec.extract, "deletes": deletes, "full_batches": full_batches}
    # Wide generated statements gain nothing from JIT and pay seconds to compile it; the newest-version
    # sort of a large file spills to disk with the default work_mem.
    conn.execute("SET LOCAL jit = off")
    conn.execute("SET LOCAL work_mem = '256MB'")
    with bound(extract=spec.extract):
        if spec.is_dimension:
            _merge_dimension(conn, spec, key, params, result)
        else:
            _merge_fact(conn, spec, key, params, result)
        conn.execute(M.drop_temp_statement())
    result.seconds = round(time.monotonic() - started, 3)
    log.info("extract merged", **{k: v for k, v in result.as_dict().items() if k != "extract"})
    return result


def _refresh_statistics(conn: psycopg.Connection, core_table: str) -> None:
    """ANALYZE a core table inside the merge's transaction (it sees the rows just written). Only the
    table's owner may: for another role Postgres skips it with a warning, and autovacuum catches up."""
    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(naming.CORE, core_table)))


def _merge_dimension(conn, spec: ExtractSpec, key: ActiveKey | None, params: dict, result: MergeResult) -> None:
    st = _dim_statements(spec.extract)
    t = time.monotonic()
    for statement in st["affected"]:
        conn.execute(statement, params)
    result.timed("affected", t)
    if key is not None:
        t = time.monotonic()
        _load_nhis(conn, spec, key, params)
        result.nhi_invalid = conn.execute(M.nhi_invalid_statement(spec), params).fetchone()[0]
        result.timed("nhi", t)
    t = time.monotonic()
    for statement in st["desired"]:
        conn.execute(statement, params)
    result.timed("desired", t)
    t = time.monotonic()
    conn.execute(st["clear"])
    result.timed("clear_current", t)
    t = time.monotonic()
    result.inserted, result.updated = conn.execute(st["upsert"]).fetchone()
    result.timed("upsert", t)
    t = time.monotonic()
    for statement in st["repoint"]:
        result.repointed += conn.execute(statement).rowcount
    result.timed("repoint", t)
    t = time.monotonic()
    result.deleted = conn.execute(st["delete"]).rowcount
    result.timed("delete", t)


def _merge_fact(conn, spec: ExtractSpec, key: ActiveKey | None, params: dict, result: MergeResult) -> None:
    st = _fact_statements(spec.extract)
    first, last = conn.execute(st["range"], params).fetchone()
    ensure_dim_date(conn, first, last)
    if key is not None:
        _load_nhis(conn, spec, key, params)
        result.nhi_invalid = conn.execute(M.nhi_invalid_statement(spec), params).fetchone()[0]
    for target, statement in st["inferred"]:
        created = conn.execute(statement, params).fetchone()[0]
        if created:
            result.inferred[target] = result.inferred.get(target, 0) + created
    for target in result.inferred:
        # Many rows may have just been added to the dimension in this transaction; without fresh
        # statistics the planner joins the facts to it as if it were tiny (a plan that took minutes).
        _refresh_statistics(conn, get_spec(target).core.table)
    # A merge join on a prefix of the key (what stale statistics lead to) is quadratic here; hash and
    # index joins are not.
    conn.execute("SET LOCAL enable_mergejoin = off")
    result.inserted, result.updated = conn.execute(st["upsert"], params).fetchone()
    if params["deletes"]:
        result.removed = conn.execute(st["removal"], params).fetchone()[0]


def _files_to_merge(conn: psycopg.Connection, run_id: int) -> list[tuple[int, str]]:
    """Staged files of this run, plus staged files that finished runs left unmerged (their merge failed
    or was never reached). Locked FOR UPDATE."""
    rows = conn.execute(
        """
        SELECT f.file_id, f.extract FROM etl.load_run_files f JOIN etl.load_runs r USING (load_run_id)
        WHERE f.status = 'staged' AND (f.load_run_id = %(run)s OR r.status <> 'running')
        ORDER BY f.file_id FOR UPDATE OF f
        """,
        {"run": run_id},
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def _store_dq(conn: psycopg.Connection, run_id: int, result: MergeResult) -> None:
    checks = []
    if M.nhi_columns(get_spec(result.extract)):
        checks.append(("nhi_invalid", result.nhi_invalid, result.nhi_invalid == 0, None))
    for target, count in sorted(result.inferred.items()):
        checks.append(("inferred_members", count, True, {"dimension": target}))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO etl.dq_results (load_run_id, extract, check_name, observed, threshold, passed, detail) "
            "VALUES (%s, %s, %s, %s, 0, %s, %s)",
            [(run_id, result.extract, name, observed, passed, Jsonb(detail) if detail else None)
             for name, observed, passed, detail in checks],
        )


def merge_run(conn: psycopg.Connection, run_id: int, settings) -> dict[str, Any]:
    """Merge every staged file of the run: dimensions first, then facts; one transaction under the
    MERGE lock, inside the caller's transaction (worker/pipeline/lifecycle.py opens it, marks the
    returned `file_ids` merged and commits; this function never commits). Returns a summary; raises
    on failure (the caller rolls back)."""
    started = time.monotonic()
    results: list[MergeResult] = []
    with bound(load_run_id=run_id), conn.transaction():
        ledger.lock(conn, LockSpace.MERGE, 0, timeout=getattr(settings, "lock_timeout_seconds", None))
        files = _files_to_merge(conn, run_id)
        by_extract: dict[str, list[int]] = {}
        for file_id, extract in files:
            by_extract.setdefault(extract, []).append(file_id)
        order = sorted(by_extract, key=lambda name: (not get_spec(name).is_dimension, name))
        for extract in order:
            result = merge_extract(conn, get_spec(extract), by_extract[extract], settings)
            _store_dq(conn, run_id, result)
            results.append(result)
    summary = {
        "load_run_id": run_id,
        "file_ids": [f for f, _ in files],  # the lifecycle marks these merged
        "files_merged": len(files),
        "extracts": {r.extract: r.as_dict() for r in results},
        "inferred_members": sum(sum(r.inferred.values()) for r in results),
        "nhi_invalid": sum(r.nhi_invalid for r in results),
        "seconds": round(time.monotonic() - started, 3),
    }
    log.info("run merged", files=len(files), inferred=summary["inferred_members"],
             nhi_invalid=summary["nhi_invalid"], seconds=summary["seconds"])
    return summary
