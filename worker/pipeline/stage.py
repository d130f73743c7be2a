"""Staging: one landed file from raw into stg.<t> and etl.rejects_<t>.

The typing engine (worker/pipeline/typing_engine) streams the file's raw rows out of Postgres, types them
in Arrow and binary-COPYs typed rows and rejects back in, on the file's connection and transaction. The
generated SQL statements (contracts/sql/staging.py, the reference rules) stage a contract the engine does
not support (`_stage_sql`).

`stage_version` is the step; worker/pipeline/lifecycle.py runs it under the file's lock, records the
file's state and commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import psycopg

from contracts.model import ExtractSpec
from contracts.registry import get as get_spec
from contracts.sql.staging import StagingSql, staging_sql
from worker.log import get_logger
from worker.pipeline import dq, ledger
from worker.pipeline.typing_engine import StagingTee, UnsupportedContract, stage_rows

log = get_logger(__name__)


@dataclass(frozen=True)
class StageResult:
    file_id: int
    status: str  # staged | failed | already
    staged: int = 0
    rejected: int = 0
    superseded: int = 0
    error: str | None = None


class ReconciliationError(RuntimeError):
    """rows read != raw rows, or raw rows != staged + rejected: something lost a row."""


@lru_cache(maxsize=None)
def _statements(extract: str) -> StagingSql:
    return staging_sql(get_spec(extract))


def stage_file(conn: psycopg.Connection, file_id: int) -> StageResult:
    """Stage one landed file through the lifecycle (its lock, state and commit); safe to call twice,
    or from two workers at once. Kept for callers of the step by file id (bench, tests)."""
    from worker.pipeline import lifecycle

    return lifecycle.stage_file(conn, file_id)


def staging_tee(conn: psycopg.Connection, record: ledger.FileRecord, threads: int = 1,
                ahead: bool = True) -> StagingTee | None:
    """The typing of a file in the pass that lands it (land.land_version's `tee`); None for a contract
    the typing engine does not support (the stage step stages it with the SQL statements). `threads`:
    blocks typed at once (TYPING_THREADS); `ahead`: typed from while the raw COPY runs
    (TYPING_DURING_RAW_COPY)."""
    from worker.pipeline.land import copy_columns

    spec = get_spec(record.extract)
    try:
        return StagingTee(conn, spec, record, copy_columns(spec), threads, ahead)
    except UnsupportedContract:
        return None


def stage_version(conn: psycopg.Connection, record: ledger.FileRecord,
                  typed: StagingTee | None = None, threads: int = 1) -> tuple[StageResult, str | None]:
    """raw -> stg + rejects and the data-quality results for a landed file, in the caller's
    transaction (worker/pipeline/lifecycle.py holds the file's lock and records the state); returns the
    counts and the data-quality error that fails the file, if any. No commit, no state write. `typed`:
    the file was typed while it landed (staging_tee); its rows are loaded instead of read from raw.
    `threads`: blocks typed at once when the rows are read from raw (TYPING_THREADS)."""
    spec = get_spec(record.extract)
    result, outcome = _stage(conn, spec, record, typed, threads)
    error = None
    if outcome.failures:
        error = "; ".join(
            f"dq {c.check_name}{'(' + c.column_name + ')' if c.column_name else ''}: "
            f"{c.observed:.4g} > {c.threshold:.4g}" for c in outcome.failures
        )
    dq.store(conn, record.load_run_id, record.file_id, spec.extract, outcome)
    return result, error


def _stage(conn: psycopg.Connection, spec: ExtractSpec, record: ledger.FileRecord,
           typed: StagingTee | None, threads: int = 1) -> tuple[StageResult, dq.DqOutcome]:
    """Stage one landed file's rows (inside the caller's transaction; no ledger writes) and compute its
    data-quality outcome. Raises ReconciliationError when a row would be lost or doubled."""
    try:
        engine = typed.load(conn) if typed is not None else stage_rows(conn, spec, record, threads)
    except UnsupportedContract:
        return _stage_sql(conn, spec, record)
    staged, rejected, superseded = engine.staged, engine.rejected, engine.superseded
    log.info("file typed", seconds={k: round(v, 3) for k, v in engine.seconds.items()},
             rows_typed_ahead=engine.rows_typed_ahead)
    _reconcile(record, staged, rejected, superseded)
    dq.record_domain_values_seen(conn, spec, record.file_id, engine.counts.domain_values)
    outcome = dq.evaluate_counts(conn, spec, record.file_id, record.rows_read or 0, staged, rejected, superseded,
                                 engine.counts)
    return StageResult(record.file_id, "staged", staged, rejected, superseded), outcome


def _reconcile(record: ledger.FileRecord, staged: int, rejected: int, superseded: int) -> None:
    if record.rows_raw != rejected + superseded + staged or record.rows_read != record.rows_raw:
        raise ReconciliationError(
            f"{record.s3_key}: read {record.rows_read}, raw {record.rows_raw}, staged {staged} + "
            f"rejected {rejected} + superseded {superseded}"
        )


def _stage_sql(conn: psycopg.Connection, spec: ExtractSpec,
               record: ledger.FileRecord) -> tuple[StageResult, dq.DqOutcome]:
    """The reference path: the generated statements of contracts/sql/staging.py, all in Postgres."""
    dq.record_domain_values(conn, spec, record.file_id)
    statements = _statements(spec.extract)
    params = {
        "file_id": record.file_id,
        "run_id": record.load_run_id,
        "s3_version_id": record.s3_version_id,
        "file_hash": record.file_hash,
        "date_extracted": record.date_extracted,
        "date_to": record.date_to,
    }
    # A wide generated statement gains nothing from JIT and pays seconds to compile it.
    conn.execute("SET LOCAL jit = off")
    # Raw rows of a just-landed file have no statistics yet; a nested loop over them is never right here.
    conn.execute("SET LOCAL enable_nestloop = off")
    pairs = conn.execute(statements.duplicates, params).fetchall()
    params["superseded"] = [p[0] for p in pairs]
    params["superseded_by"] = [p[1] for p in pairs]
    staged = conn.execute(statements.staged_insert, params).rowcount
    superseded = len(pairs)
    rejected = conn.execute(statements.rejects_insert, params).rowcount - superseded
    _reconcile(record, staged, rejected, superseded)
    outcome = dq.evaluate(conn, spec, record.file_id, record.rows_read or 0, staged, rejected, superseded)
    return StageResult(record.file_id, "staged", staged, rejected, superseded), outcome
