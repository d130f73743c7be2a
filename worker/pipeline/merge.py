"""Merge: stg -> core. Dimensions as SCD2 (validity from DateExtracted), facts newest-wins.

Plain functions over a connection (no Celery). The SQL is generated from the contracts by
contracts/sql/merge.py (see its docstring for the rules); this module orders the statements, hashes
NHIs in Python (the HMAC key never reaches Postgres), and keeps the ledger.

- `merge_extract(conn, spec, file_ids, settings)`: one extract, a handful of set-based statements; runs in
  the caller's transaction. Raises OrphanError (after counting) when a relation of the rows it wrote
  would be broken; the caller's transaction must then roll back.
- `merge_run(conn, run_id, settings)`: every 'staged' file of the run (and staged files that earlier,
  finished runs left unmerged), dimensions first then facts, in ONE transaction under the run-wide
  MERGE advisory lock (exclusive: two runs never merge at once); files become 'merged' with merged_at;
  per-extract counts of invalid NHIs, inferred members and orphans go to etl.dq_results.
- The same work in steps, for a caller that runs the fact merges of different extracts in parallel:
  `merge_dimensions(conn, run_id, settings)` (every dimension extract, exclusive run-wide lock), then
  `merge_facts_of_extract(conn, run_id, extract, settings)` per fact extract (the run-wide lock shared,
  so never beside a dimension merge or merge_run, plus an exclusive lock of its own extract); each in
  its own transaction, with the same summary shape as merge_run.
- `ensure_dim_date(conn, first, last, odd)`.

Referential integrity: facts have no FOREIGN KEY constraints (migration 0009). Every reference is
resolved, or an inferred member is created first; then, per relation (each FK column, date_key,
load_file_id; for a dimension, every fact column pointing at it), the number of orphans is counted and
recorded in etl.dq_results (check 'orphans', threshold 0). A non-zero count raises OrphanError: the
merge rolls back, and its failing counts are recorded in a transaction of their own.

Configuration read from etl.config (worker.pipeline.config.get_value):
- 'full_file_deletes' (boolean, per extract or '*', default false): whether full files remove rows.
- 'full_batches' (JSON list of DateExtracted strings 'yyMMddHHmm', NZ local, per extract or '*'): which
  batches are full extracts. Only a full file of an extract with deletes enabled removes rows.
"""

from __future__ import annotations

import time
import zlib
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
from worker.pipeline.ledger import LockSpace
from worker.pipeline.nhi_keys import ActiveKey

log = get_logger(__name__)

__all__ = [
    "MergeResult", "OrphanError", "merge_extract", "merge_run", "merge_dimensions", "merge_facts_of_extract",
    "ensure_dim_date", "ConfigurationError",
]


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
    orphans: dict[str, int] = field(default_factory=dict)  # relation -> rows that break it (must be 0)
    fast: int = 0  # dimension rows of the files that took the fast path (history only grows at its end)
    slow: int = 0  # dimension keys whose history was recomputed
    # The operator's full-vs-delta flag (config full_file_deletes + full_batches) as this merge used it:
    # on record in the run's summary whenever full files removed what they no longer hold.
    full_file_deletes: list[str] | None = None
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step, for tuning
    # A bulk fact merge (BULK_INDEX_REBUILD_ROWS): "insert" into an empty fact, "existing+new" into a
    # smaller one; None for the upsert.
    bulk: str | None = None

    def timed(self, step: str, started: float) -> None:
        self.steps[step] = round(self.steps.get(step, 0.0) + time.monotonic() - started, 4)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class OrphanError(RuntimeError):
    """A merge would leave a reference unresolved or pointing at no row. Carries the counts."""

    def __init__(self, result: MergeResult) -> None:
        self.result = result
        broken = {name: n for name, n in result.orphans.items() if n}
        super().__init__(
            f"{result.extract}: referential integrity: "
            + "; ".join(f"{n} row(s) of {name} unresolved or naming no row" for name, n in sorted(broken.items()))
            + " (the merge was rolled back; counts in etl.dq_results, check 'orphans')"
        )


# -- statements (cached per extract) --------------------------------------------------------------------
@lru_cache(maxsize=None)
def _dim_statements(extract: str) -> dict[str, Any]:
    specs = load_all()
    spec = specs[extract]
    pairs = M.referencing(spec, specs)
    orphan_relations, orphans = M.dim_orphans_statement(spec, specs)
    return {
        "incoming": {several: M.dim_incoming_statement(spec, several) for several in (False, True)},
        "affected": M.dim_affected_statement(spec),
        "desired": M.dim_desired_statement(spec),
        "clear": M.dim_clear_current_statement(spec),
        "upsert": M.dim_upsert_statement(spec),
        "repoint": [M.dim_repoint_statement(spec, fact, ref) for fact, ref in pairs],
        "orphans": (orphan_relations, orphans),
        "delete": M.dim_delete_obsolete_statement(spec),
        "fast": M.dim_fast_statement(spec),
        "fast_apply": M.dim_fast_apply_statements(spec),
        "fast_repoint": [M.dim_fast_repoint_statement(spec, fact, ref) for fact, ref in pairs],
        "lineage": {"desired": M.dim_lineage_statement(M.DESIRED_TABLE), "fast": M.dim_lineage_statement(M.FAST_TABLE)},
    }


@lru_cache(maxsize=None)
def _fact_statements(extract: str) -> dict[str, Any]:
    specs = load_all()
    spec = specs[extract]
    return {
        "range": M.fact_date_range_statement(spec),
        "refs": M.inferred_refs_statements(spec, specs),
        "inferred": M.inferred_statements(spec, specs),
        "newest": M.fact_newest_statements(spec),
        "upsert": {dedupe: M.fact_upsert_statement(spec, specs, dedupe) for dedupe in (False, True)},
        "bulk": {(dedupe, keys): M.fact_upsert_statement(spec, specs, dedupe, keys)
                 for dedupe in (False, True) for keys in (M.EXISTING_KEYS, M.NEW_KEYS, M.INSERT_ONLY)},
        "held": M.held_keys_statements(spec),
        "relations": M.relations(spec, specs),
        "removal": M.fact_removal_statement(spec),
    }


# -- helpers ------------------------------------------------------------------------------------------
def ensure_dim_date(conn: psycopg.Connection, first: date | None, last: date | None,
                    odd: list[date] | None = None) -> None:
    """core.dim_date holds every day of [first, last], and of the calendar it already holds, as one
    continuous range (so its rows are a function of the dates seen, not of the order they came in);
    plus the single days of `odd` (implausible dates: no range filled). Idempotent."""
    if first is not None and last is not None:
        if first > last:
            first, last = last, first
        low, high = conn.execute(M.calendar_bounds_statement()).fetchone()
        first = min(first, low) if low is not None else first
        last = max(last, high) if high is not None else last
        conn.execute(M.ensure_dim_date_statement(), {"first": first, "last": last})
    if odd:
        conn.execute(M.ensure_dates_statement(), {"dates": list(odd)})


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


def _others_staged(conn: psycopg.Connection, spec: ExtractSpec, file_ids: list[int]) -> bool:
    """Whether a file of the extract waits 'staged' outside this merge (its versions count for the
    history, so the fast path, which looks at the merged files only, must not be taken)."""
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM etl.load_run_files WHERE extract = %s AND status = 'staged' "
        "AND NOT (file_id = ANY(%s)))",
        (spec.extract, file_ids),
    ).fetchone()[0]


# -- merges -------------------------------------------------------------------------------------------
def merge_extract(conn: psycopg.Connection, spec: ExtractSpec, file_ids: list[int], settings) -> MergeResult:
    """Merge the stg rows of `file_ids` (files of extract `spec`) into core. Runs in the caller's
    transaction; the caller holds the MERGE lock and marks the files merged. Raises OrphanError when a
    relation would be broken (the caller rolls back)."""
    started = time.monotonic()
    file_ids = sorted({int(f) for f in file_ids})
    result = MergeResult(spec.extract, spec.core.table, len(file_ids))
    if not file_ids:
        return result
    # The key core is hashed with (a configuration error when the configured keys do not include it).
    key = nhi_keys.key_for_merge(conn, settings, spec.extract) if M.nhi_columns(spec) else None
    deletes, full_batches = _delete_settings(conn, spec)
    params = {"files": file_ids, "extract": spec.extract, "deletes": deletes, "full_batches": full_batches}
    if deletes:
        result.full_file_deletes = full_batches
    # Wide generated statements gain nothing from JIT and pay seconds to compile it; the newest-version
    # sort of a large file spills to disk with the default work_mem.
    conn.execute("SET LOCAL jit = off")
    conn.execute("SET LOCAL work_mem = '256MB'")
    with bound(extract=spec.extract):
        if spec.is_dimension:
            params["all_slow"] = deletes or _others_staged(conn, spec, file_ids)
            _merge_dimension(conn, spec, key, params, result)
        else:
            _merge_fact(conn, spec, key, params, result, settings)
        conn.execute(M.drop_temp_statement())
    result.seconds = round(time.monotonic() - started, 3)
    log.info("extract merged", orphans=sum(result.orphans.values()),
             **{k: v for k, v in result.as_dict().items() if k not in ("extract", "orphans")})
    if any(result.orphans.values()):
        log.error("orphans: the merge is rolled back", extract=spec.extract,
                  orphans={k: v for k, v in result.orphans.items() if v})
        raise OrphanError(result)
    return result


def _refresh_statistics(conn: psycopg.Connection, spec: ExtractSpec) -> None:
    """ANALYZE a dimension inside the merge's transaction (it sees the rows just written): the columns
    the fact merge joins on only (all 200 columns of dim_patient took seconds). Only the table's owner
    may: for another role Postgres skips it with a warning, and autovacuum catches up."""
    columns = [*spec.natural_key, naming.surrogate_key(spec.core.table), "is_current", "is_inferred", "effective_from"]
    conn.execute(sql.SQL("ANALYZE {} ({})").format(
        sql.Identifier(naming.CORE, spec.core.table), sql.SQL(", ").join(sql.Identifier(c) for c in columns)))


def _merge_dimension(conn, spec: ExtractSpec, key: ActiveKey | None, params: dict, result: MergeResult) -> None:
    st = _dim_statements(spec.extract)
    t = time.monotonic()
    for statement in st["incoming"][len(params["files"]) > 1]:
        conn.execute(statement, params)
    for statement in st["affected"]:
        conn.execute(statement, params)
    result.timed("incoming", t)
    if key is not None:
        t = time.monotonic()
        _load_nhis(conn, spec, key, params)
        result.nhi_invalid = conn.execute(M.nhi_invalid_statement(spec), params).fetchone()[0]
        result.timed("nhi", t)
    # Slow path: the affected keys' history recomputed from stg.
    result.slow = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(M.AFFECTED_TABLE)).fetchone()[0]
    lineage = M.lineage_relation(spec).name
    result.orphans[lineage] = 0
    if result.slow:
        t = time.monotonic()
        for statement in st["desired"]:
            conn.execute(statement, params)
        result.orphans[lineage] += conn.execute(st["lineage"]["desired"]).fetchone()[0]
        result.timed("desired", t)
        if result.orphans[lineage]:
            return  # nothing written: merge_extract raises, the transaction rolls back
        t = time.monotonic()
        conn.execute(st["clear"])
        result.timed("clear_current", t)
        t = time.monotonic()
        inserted, updated = conn.execute(st["upsert"]).fetchone()
        result.inserted += inserted
        result.updated += updated
        result.timed("upsert", t)
        t = time.monotonic()
        for statement in st["repoint"]:
            result.repointed += conn.execute(statement).rowcount
        result.timed("repoint", t)
        t = time.monotonic()
        relations, orphans = st["orphans"]
        if orphans is not None:
            counts = conn.execute(orphans).fetchone()
            result.orphans.update({rel.name: int(n) for rel, n in zip(relations, counts)})
        result.timed("orphans", t)
        if any(result.orphans.values()):
            return  # nothing deleted: merge_extract raises, the transaction rolls back
        t = time.monotonic()
        result.deleted = conn.execute(st["delete"]).rowcount
        result.timed("delete", t)
    else:
        result.orphans.update({rel.name: 0 for rel in st["orphans"][0]})
    # Fast path: the history grows at its end only; only the keys that changed are written.
    t = time.monotonic()
    for statement in st["fast"]:
        conn.execute(statement, params)
    result.fast = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE NOT m_slow").format(M.INCOMING_TABLE)).fetchone()[0]
    changed = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(M.FAST_TABLE)).fetchone()[0]
    if changed:
        result.orphans[lineage] += conn.execute(st["lineage"]["fast"]).fetchone()[0]
        if result.orphans[lineage]:
            return
        apply = st["fast_apply"]
        result.updated += conn.execute(apply["update"]).rowcount
        result.updated += conn.execute(apply["close"]).rowcount
        result.inserted += conn.execute(apply["insert"]).rowcount
        for statement in st["fast_repoint"]:
            result.repointed += conn.execute(statement).rowcount
    result.timed("fast", t)


def _merge_fact(conn, spec: ExtractSpec, key: ActiveKey | None, params: dict, result: MergeResult,
                settings) -> None:
    st = _fact_statements(spec.extract)
    t = time.monotonic()
    first, last, odd = conn.execute(st["range"], params).fetchone()
    ensure_dim_date(conn, first, last, odd)
    result.timed("dim_date", t)
    if key is not None:
        t = time.monotonic()
        _load_nhis(conn, spec, key, params)
        result.nhi_invalid = conn.execute(M.nhi_invalid_statement(spec), params).fetchone()[0]
        result.timed("nhi", t)
    t = time.monotonic()
    for statement in st["refs"]:
        conn.execute(statement, params)
    for target, statement in st["inferred"]:
        created, orphaned = conn.execute(statement, params).fetchone()
        lineage = M.lineage_relation(get_spec(target)).name
        result.orphans[lineage] = result.orphans.get(lineage, 0) + int(orphaned)
        if created:
            result.inferred[target] = result.inferred.get(target, 0) + created
    for target in sorted(result.inferred):
        # Many rows may have just been added to the dimension in this transaction; without fresh
        # statistics the planner joins the facts to it as if it were tiny (a plan that took minutes).
        _refresh_statistics(conn, get_spec(target))
    result.timed("inferred", t)
    # A merge join on a prefix of the key (what stale statistics lead to) is quadratic here; hash and
    # index joins are not.
    conn.execute("SET LOCAL enable_mergejoin = off")
    t = time.monotonic()
    # One file holds a key once (stg's unique (load_file_id, <nk>)): no newest-version sort needed.
    several = len(params["files"]) > 1
    if several:
        for statement in st["newest"]:
            conn.execute(statement, params)
    held = _bulk_load(conn, spec, params, settings)
    if held is None:
        statements = [st["upsert"][several]]
    else:
        # A bulk load resolves every reference of a batch larger than the fact: hash joins to the
        # dimensions always. Right after the files were staged stg may have no statistics, and the planner
        # then took the batch for a few thousand rows and resolved 800k rows by index probes per row and
        # dimension (8 x 100k Appointments: the upsert 17-22 s; by hash joins 14-16 s). Its version
        # look-ups are subplans, which this does not touch. Restored after the upsert: the next extract of
        # the same transaction (merge_run) plans as usual.
        nestloop = conn.execute("SELECT current_setting('enable_nestloop')").fetchone()
        conn.execute("SET LOCAL enable_nestloop = off")
        conn.execute(_LOOKUP_INDEXES, (spec.core.table, False))
        if held == 0:
            result.bulk = M.INSERT_ONLY
            statements = [st["bulk"][several, M.INSERT_ONLY]]
        else:
            result.bulk = f"{M.EXISTING_KEYS}+{M.NEW_KEYS}"
            for statement in st["held"]:
                conn.execute(statement)
            statements = [st["bulk"][several, M.EXISTING_KEYS], st["bulk"][several, M.NEW_KEYS]]
    result.orphans.update({rel.name: 0 for rel in st["relations"]})  # beside the inferred members' lineage
    for statement in statements:
        row = conn.execute(statement, params).fetchone()
        result.inserted += row[0]
        result.updated += row[1]
        for rel, n in zip(st["relations"], row[2:]):
            result.orphans[rel.name] += int(n)
    result.timed("upsert", t)
    if held is not None:
        assert nestloop is not None
        conn.execute("SELECT set_config('enable_nestloop', %s, true)", (nestloop[0],))
        t = time.monotonic()
        conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
        conn.execute(_LOOKUP_INDEXES, (spec.core.table, True))
        result.timed("indexes", t)
    if params["deletes"] and not any(result.orphans.values()):
        t = time.monotonic()
        result.removed = conn.execute(st["removal"], params).fetchone()[0]
        result.timed("removal", t)


_LOOKUP_INDEXES = sql.SQL("SELECT {}(%s, %s)").format(sql.Identifier(*M.LOOKUP_INDEX_FUNCTION))


def _bulk_load(conn: psycopg.Connection, spec: ExtractSpec, params: dict, settings) -> int | None:
    """For a bulk load (contracts/sql/merge.py, bulk loads: at least BULK_INDEX_REBUILD_ROWS staged rows
    going into a fact that holds fewer rows than the batch), the rows the fact holds; else None."""
    threshold = settings.bulk_index_rebuild_rows
    if threshold <= 0:
        return None
    staged = conn.execute("SELECT coalesce(sum(rows_staged), 0) FROM etl.load_run_files WHERE file_id = ANY(%s)",
                          (params["files"],)).fetchone()[0]
    if staged < threshold:
        return None
    held = int(conn.execute(M.bulk_row_probe_statement(spec), {"limit": int(staged)}).fetchone()[0])
    return held if held < staged else None


def _files_to_merge(conn: psycopg.Connection, run_id: int, extracts: list[str] | None = None) -> list[tuple[int, str]]:
    """Staged files of this run, plus staged files that finished runs left unmerged (their merge failed
    or was never reached); only of `extracts` when given. Locked FOR UPDATE."""
    rows = conn.execute(
        """
        SELECT f.file_id, f.extract FROM etl.load_run_files f JOIN etl.load_runs r USING (load_run_id)
        WHERE f.status = 'staged' AND (f.load_run_id = %(run)s OR r.status <> 'running')
          AND (%(extracts)s::text[] IS NULL OR f.extract = ANY(%(extracts)s::text[]))
        ORDER BY f.file_id FOR UPDATE OF f
        """,
        {"run": run_id, "extracts": extracts},
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def _store_dq(conn: psycopg.Connection, run_id: int, result: MergeResult) -> None:
    checks = []
    if M.nhi_columns(get_spec(result.extract)):
        checks.append(("nhi_invalid", None, None, result.nhi_invalid, result.nhi_invalid == 0, None))
    for target, count in sorted(result.inferred.items()):
        checks.append(("inferred_members", None, None, count, True, {"dimension": target}))
    for relation, count in sorted(result.orphans.items()):
        column = relation.split(" -> ")[0].rsplit(".", 1)[1]
        checks.append(("orphans", column, relation, count, count == 0, None))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO etl.dq_results (load_run_id, extract, check_name, column_name, rule, observed, "
            "threshold, passed, detail) VALUES (%s, %s, %s, %s, %s, %s, 0, %s, %s)",
            [(run_id, result.extract, name, column, rule, observed, passed, Jsonb(detail) if detail else None)
             for name, column, rule, observed, passed, detail in checks],
        )


def _extract_lock(extract: str) -> int:
    """Second key of an extract's own MERGE lock (the run-wide one is 0): stable across processes."""
    return zlib.crc32(extract.encode()) % 2_147_483_646 + 1


def _lock_shared(conn: psycopg.Connection, space: LockSpace, object_id: int) -> None:
    conn.execute("SELECT pg_advisory_xact_lock_shared(%s, %s)", (int(space), object_id))


def _merge_files(conn: psycopg.Connection, run_id: int, settings, extracts: list[str] | None,
                 lock: str) -> dict[str, Any]:
    """Merge the staged files of the run (of `extracts` when given; dimensions first) in one transaction,
    inside the caller's (worker/pipeline/lifecycle.py opens it, marks the returned `file_ids` merged and
    commits; this never commits). lock: 'run' (the run-wide MERGE lock, exclusive) or 'extract' (the
    run-wide lock shared and each extract's own lock exclusive). An OrphanError rolls the merge back and
    propagates with its counts (the lifecycle records them with `record_orphans`)."""
    started = time.monotonic()
    results: list[MergeResult] = []
    timeout = getattr(settings, "lock_timeout_seconds", None)
    with bound(load_run_id=run_id), conn.transaction():
        if lock == "run":
            ledger.lock(conn, LockSpace.MERGE, 0, timeout=timeout)
        else:
            _lock_shared(conn, LockSpace.MERGE, 0)
            for extract in sorted(extracts or []):
                ledger.lock(conn, LockSpace.MERGE, _extract_lock(extract), timeout=timeout)
        files = _files_to_merge(conn, run_id, extracts)
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


def record_orphans(conn: psycopg.Connection, run_id: int, exc: OrphanError) -> None:
    """The orphan counts of a merge that failed on them, for etl.dq_results (the lifecycle calls this in
    a transaction of its own after rolling the merge back)."""
    _store_dq(conn, run_id, exc.result)


def merge_run(conn: psycopg.Connection, run_id: int, settings) -> dict[str, Any]:
    """Merge every staged file of the run: dimensions first, then facts; one transaction under the
    MERGE lock, inside the caller's. Returns a summary with the `file_ids` merged; raises on failure."""
    return _merge_files(conn, run_id, settings, None, "run")


def merge_dimensions(conn: psycopg.Connection, run_id: int, settings) -> dict[str, Any]:
    """The dimension half of merge_run: every staged dimension file of the run, in one transaction
    under the exclusive run-wide MERGE lock. Then the facts may merge per extract, in parallel."""
    dims = sorted(name for name, spec in load_all().items() if spec.is_dimension)
    return _merge_files(conn, run_id, settings, dims, "run")


def ensure_calendar_of_extract(conn: psycopg.Connection, run_id: int, extract: str) -> None:
    """The core.dim_date rows the run's staged files of a fact extract need, in the caller's transaction:
    the lifecycle commits it before the extract's merge, so parallel fact merges do not queue on
    core.dim_date (a day inserted by one is seen by the others)."""
    _lock_shared(conn, LockSpace.MERGE, 0)
    ids = [f for f, _ in _files_to_merge_unlocked(conn, run_id, [extract])]
    if ids:
        first, last, odd = conn.execute(_fact_statements(extract)["range"], {"files": ids}).fetchone()
        ensure_dim_date(conn, first, last, odd)


def merge_facts_of_extract(conn: psycopg.Connection, run_id: int, extract: str, settings) -> dict[str, Any]:
    """The staged files of one fact extract of the run, in the caller's transaction, holding that
    extract's own MERGE lock (exclusive) and the run-wide one shared: fact merges of different extracts
    run in parallel, never beside a dimension merge (inferred members they create are ordered inserts,
    so two of them wait for each other at worst, never deadlock). Never commits."""
    spec = get_spec(extract)
    if spec.is_dimension:
        raise ValueError(f"{extract} is a dimension: merge it with merge_dimensions")
    with bound(load_run_id=run_id, extract=extract):
        return _merge_files(conn, run_id, settings, [extract], "extract")


def staged_fact_extracts(conn: psycopg.Connection, run_id: int) -> list[str]:
    """The fact extracts with files the run's merge takes (its own staged files and those closed runs
    left), in name order: one merge task each, after the dimensions."""
    facts = sorted(name for name, spec in load_all().items() if not spec.is_dimension)
    return sorted({extract for _, extract in _files_to_merge_unlocked(conn, run_id, facts)})


def _files_to_merge_unlocked(conn: psycopg.Connection, run_id: int, extracts: list[str]) -> list[tuple[int, str]]:
    rows = conn.execute(
        """
        SELECT f.file_id, f.extract FROM etl.load_run_files f JOIN etl.load_runs r USING (load_run_id)
        WHERE f.status = 'staged' AND (f.load_run_id = %(run)s OR r.status <> 'running')
          AND f.extract = ANY(%(extracts)s::text[])
        """,
        {"run": run_id, "extracts": extracts},
    ).fetchall()
    return [(r[0], r[1]) for r in rows]
