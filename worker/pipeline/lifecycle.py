"""One owner for a run's life: every write to etl.load_runs and etl.load_run_files happens here (file
state through worker/pipeline/ledger.py, which only this module calls).

    open_run      -> a `running` run (or the live run of the same selection or request key: joined)
    plan_run      -> discovery + ledger, once per run (a second call returns the run's open files)
    process_file  -> land_file (which stages the file in the same pass and transaction, when it can) then
                     stage_file (for a file left landed), each under `run_file_step`'s one failure rule
    merge         -> stg -> core for the run's staged files (a failure is recorded on the run)
    close_run     -> status from the files and the run's error, summary, etl.health, anomalies,
                     notification; once (a second call returns the stored outcome)
    fail_run      -> record_run_error + close_run: a run never stays `running` because its driver broke
    reconcile     -> what the beat's reconciler does for runs whose driver is gone

Both drivers are thin loops over these functions: `--inline` (worker/pipeline/run.py) and the Celery
tasks (worker/tasks.py). No Celery import here.

Transactions. The step functions (land.land_version, stage.stage_version, merge.merge_run, the ledger)
never commit; this module commits at these points, and only these:
  1. on entry to each public function, whatever read the caller left open (never a write: the
     drivers do not write);
  2. after taking a file's lease (so another process sees that the file is being worked on);
  3. at the end of each step's transaction: the file's new state is committed together with the rows
     the step wrote (raw, stg, rejects, dq results, core), so state and data never disagree;
  4. after recording a failure (its own transaction, the work's transaction rolled back);
  5. after opening, planning and closing a run (close_run then lets notify.notify_run commit its own
     etl.notifications row).

The one failure rule (`run_file_step`): a step that classifies its own failure (a format error, a
data-quality threshold) records the file `failed`, not retryable, and returns; any other exception
rolls back and records the file `failed`, retryable (the next run, or a retry, takes it again), and
the outcome says whether the error was transient (Postgres or S3 unreachable: worth a retry now).
Only when even that record cannot be written (the connection is gone) does the exception propagate.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from enum import Enum
from typing import Any

import botocore.exceptions
import psycopg
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from worker.io.indici_reader import IndiciFormatError
from worker.log import bound, get_logger
from worker.pipeline import anomalies, discovery, ledger, notify, relaxed
from worker.pipeline import merge as merge_step
from worker.pipeline.identity import ConfigurationError
from worker.pipeline.land import LandResult, land_version
from worker.pipeline.stage import StageResult, stage_version, staging_tee
from worker.pipeline.states import (
    DONE_FILE_STATES,
    FILE_TRANSITIONS,
    RUN_TRANSITIONS,
    FileStatus,
    InvalidTransition,
    LockSpace,
    RunStatus,
    check_file_transition,
    check_run_transition,
)
from worker.pipeline.typing_engine import StagingTee
from worker.settings import Settings

__all__ = [
    "DONE_FILE_STATES", "FILE_TRANSITIONS", "RUN_TRANSITIONS", "FileStatus", "InvalidTransition", "LockSpace",
    "RunStatus", "check_file_transition", "check_run_transition", "Selection", "RunPlan", "OpenedRun", "Step",
    "StepOutcome", "TRANSIENT_ERRORS", "open_run", "plan_run", "land_file", "stage_file", "run_file_step",
    "process_file", "merge", "record_run_error", "close_run", "fail_run", "reconcile", "request_reprocess",
    "open_operator_run", "return_to_landed", "staged_fact_extracts", "ALL_PARTS", "DIMENSIONS",
]

log = get_logger(__name__)

# Worth retrying now: the service on the other end may come back. (OSError covers socket errors and
# the landing's own "the spooled copy changed" check.)
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,
    OSError,
)

# First key of the advisory lock serialising open_run for one selection (second key: its hash).
_OPEN_LOCK = 6
# The reconciler gives up on a run after this many attempts to get it going again.
RECONCILE_ROUNDS = 3


@dataclass(frozen=True)
class Selection:
    """What a run loads: the newest batches (nightly) or a DateExtracted range (backfill)."""

    kind: str = "nightly"  # nightly | backfill
    date_from: date | None = None
    date_to: date | None = None
    extracts: tuple[str, ...] = ()
    key_prefix: str | None = None

    def as_params(self) -> dict[str, Any]:
        return {
            "date_from": self.date_from.isoformat() if self.date_from else None,
            "date_to": self.date_to.isoformat() if self.date_to else None,
            "extracts": list(self.extracts),
            "key_prefix": self.key_prefix,
        }

    @property
    def active_key(self) -> str:
        """Two runs of this key cannot be running at once (a unique index on etl.load_runs)."""
        return f"{self.kind}:{json.dumps(self.as_params(), sort_keys=True)}"


@dataclass
class RunPlan:
    run_id: int
    file_ids: list[int] = field(default_factory=list)
    already_done: int = 0
    unparseable: int = 0
    superseded: int = 0
    adopted: int = 0
    first_load: list[str] = field(default_factory=list)

    def as_summary(self) -> dict[str, Any]:
        return {"files": len(self.file_ids), "already_done": self.already_done, "unparseable": self.unparseable,
                "superseded_versions": self.superseded, "adopted": self.adopted,
                "first_load": self.first_load}


@dataclass(frozen=True)
class OpenedRun:
    run_id: int
    joined: bool  # True: a live run of the same selection (or request key) already existed


class Step(str, Enum):
    LAND = "land"
    STAGE = "stage"


@dataclass(frozen=True)
class StepOutcome:
    file_id: int
    status: FileStatus
    retry: bool = False  # the step failed on a transient error: worth retrying now
    error: str | None = None

    def as_task_result(self) -> dict[str, Any]:
        """What a task returns: ids and the status, nothing from the file's rows."""
        return {"file_id": self.file_id, "status": self.status.value}


# -- transactions -----------------------------------------------------------------------------------
def _boundary(conn: psycopg.Connection) -> None:
    """Commit point 1: whatever read the caller left open ends here."""
    if conn.info.transaction_status != TransactionStatus.IDLE:
        conn.commit()


@contextmanager
def _transaction(conn: psycopg.Connection) -> Iterator[None]:
    """A real transaction (committed at the end of the block, rolled back on an exception)."""
    _boundary(conn)
    with conn.transaction():
        yield


def _rollback(conn: psycopg.Connection) -> None:
    if not conn.closed and not conn.broken:
        conn.rollback()


def _holder(what: str) -> str:
    return f"indici-ingest {what} pid {os.getpid()}@{socket.gethostname()}"


def _renew_run_lease(conn: psycopg.Connection, run_id: int, settings: Settings, seconds: int | None = None) -> None:
    """The run is alive for RUN_LEASE_SECONDS more (or `seconds`: a merge holds it for its hard limit)."""
    conn.execute(
        "UPDATE etl.load_runs SET lease_expires_at = greatest(lease_expires_at, now() + make_interval(secs => %s)) "
        "WHERE load_run_id = %s AND status = 'running'",
        (seconds or settings.run_lease_seconds, run_id),
    )


# -- opening a run ----------------------------------------------------------------------------------
def open_run(conn: psycopg.Connection, selection: Selection, settings: Settings, *, driver: str = "celery",
             request_key: str | None = None) -> OpenedRun:
    """A new `running` run, or the run it joins: the run of `request_key` (e.g. 'nightly:2026-12-02',
    whatever its state: beat's second message of a night), or the live run of the same selection
    (two runs started at once are one run). A running run of the same selection whose lease expired
    (its driver is gone) is failed first, with the reason, and a new run opened."""
    params = {**selection.as_params(), "driver": driver}
    while True:
        with _transaction(conn):
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_OPEN_LOCK, selection.active_key))
            if request_key is not None:
                row = conn.execute("SELECT load_run_id FROM etl.load_runs WHERE request_key = %s",
                                   (request_key,)).fetchone()
                if row is not None:
                    return OpenedRun(row[0], joined=True)
            live = conn.execute(
                "SELECT r.load_run_id, " + ledger.RUN_ALIVE + " FROM etl.load_runs r "
                "WHERE r.active_key = %s AND r.status = 'running'",
                (selection.active_key,),
            ).fetchone()
            if live is None:
                row = conn.execute(
                    "INSERT INTO etl.load_runs (kind, params, request_key, active_key, lease_expires_at) "
                    "VALUES (%s, %s, %s, %s, now() + make_interval(secs => %s)) RETURNING load_run_id",
                    (selection.kind, Jsonb(params), request_key, selection.active_key, settings.run_lease_seconds),
                ).fetchone()
                assert row is not None
                log.info("run opened", load_run_id=row[0], kind=selection.kind, driver=driver)
                return OpenedRun(row[0], joined=False)
            if live[1]:
                log.info("a live run of the same selection exists; joining it", load_run_id=live[0])
                if request_key is not None:  # a later message of the same request finds this run by its key
                    conn.execute("UPDATE etl.load_runs SET request_key = %s WHERE load_run_id = %s "
                                 "AND request_key IS NULL", (request_key, live[0]))
                return OpenedRun(live[0], joined=True)
        fail_run(conn, live[0], "its driver stopped (lease expired) and a new run of the same selection started")


# -- planning ---------------------------------------------------------------------------------------
def plan_run(conn: psycopg.Connection, s3_client: Any, settings: Settings, selection: Selection,
             run_id: int) -> RunPlan | None:
    """Discover and register the run's files, once: a second call (a redelivered message, the same run
    enqueued twice) returns the run's files not finished yet instead of discovering again; None when the
    run is closed. Files that runs no longer alive left unfinished are adopted first. Every object
    version considered gets a ledger row (`superseded` for an older version of a key taken). Raises
    when discovery fails; the driver then fails the run (fail_run)."""
    _boundary(conn)
    with bound(load_run_id=run_id):
        state = _run_state(conn, run_id)
        _boundary(conn)
        if state is None:
            raise LookupError(f"no run {run_id} in etl.load_runs")
        status, summary = state
        if status != RunStatus.RUNNING:
            log.info("run already closed; nothing to plan", status=status.value)
            return None
        planned = (summary or {}).get("planned")
        if planned is not None:
            plan = _replan(conn, run_id, planned)
            _boundary(conn)
            return plan
        found = discovery.discover(s3_client, settings.s3_bucket, settings.s3_prefix, settings.known_per_org_ids)
        with _transaction(conn):
            ledger.lock(conn, LockSpace.PLAN, run_id, timeout=settings.lock_timeout_seconds)
            state = _run_state(conn, run_id)
            assert state is not None
            if state[0] != RunStatus.RUNNING:
                return None
            planned = (state[1] or {}).get("planned")
            if planned is not None:  # planned meanwhile by a copy of this message
                return _replan(conn, run_id, planned)
            plan = _register(conn, run_id, selection, found)
            conn.execute(
                "UPDATE etl.load_runs SET summary = coalesce(summary, '{}'::jsonb) || %s, "
                "lease_expires_at = now() + make_interval(secs => %s) WHERE load_run_id = %s",
                (Jsonb({"planned": plan.as_summary()}), settings.run_lease_seconds, run_id),
            )
        log.info("run planned", **plan.as_summary(), discovered=len(found.files))
        return plan


def _run_state(conn: psycopg.Connection, run_id: int) -> tuple[RunStatus, dict[str, Any] | None] | None:
    row = conn.execute("SELECT status, summary FROM etl.load_runs WHERE load_run_id = %s", (run_id,)).fetchone()
    return None if row is None else (RunStatus(row[0]), row[1])


def _replan(conn: psycopg.Connection, run_id: int, planned: dict[str, Any]) -> RunPlan:
    files = [f.file_id for f in ledger.files_of_run(conn, run_id)
             if f.status not in ledger.DONE_STATES and not (f.status == FileStatus.FAILED and not f.retryable)]
    log.info("run already planned; its unfinished files again", files=len(files))
    return RunPlan(run_id, files, planned.get("already_done", 0), planned.get("unparseable", 0),
                   planned.get("superseded_versions", 0), planned.get("adopted", 0),
                   planned.get("first_load", []))


def _register(conn: psycopg.Connection, run_id: int, selection: Selection, found: discovery.Discovery) -> RunPlan:
    plan = RunPlan(run_id)
    for version, reason in found.unparseable:
        ledger.record_unparseable(conn, run_id, version.bucket, version.key, version.version_id, reason)
        log.warning("key skipped: it does not parse", s3_key=version.key, reason=reason)
    plan.unparseable = len(found.unparseable)
    if selection.kind == "backfill":
        assert selection.date_from is not None and selection.date_to is not None
        chosen = discovery.select_range(found.files, selection.date_from, selection.date_to, selection.extracts,
                                        selection.key_prefix)
    else:
        loaded = ledger.loaded_up_to(conn)
        chosen = discovery.select_nightly(found.files, loaded, selection.extracts)
        plan.first_load = sorted({f.spec.extract for f in chosen if f.group not in loaded})
    # Finish what runs no longer alive left half-done before starting new work.
    for record in ledger.unfinished(conn):
        if ledger.adopt(conn, record.file_id, run_id):
            plan.file_ids.append(record.file_id)
            plan.adopted += 1
    for f in chosen:
        record = ledger.register(conn, run_id, f)
        if record.load_run_id == run_id:
            if record.file_id not in plan.file_ids:
                plan.file_ids.append(record.file_id)
        else:  # finished, or another run's work (a live run's, or staged files the merge takes anyway)
            plan.already_done += 1
    chosen_keys = {(f.version.bucket, f.version.key) for f in chosen}
    for old in found.superseded_versions:
        if (old.version.bucket, old.version.key) in chosen_keys:
            ledger.register_superseded(conn, run_id, old)
            plan.superseded += 1
    return plan


# -- one file ---------------------------------------------------------------------------------------
def _landable(record: ledger.FileRecord) -> bool:
    return record.status == FileStatus.PENDING or record.retryable


def land_file(conn: psycopg.Connection, s3_client: Any, file_id: int, settings: Settings, *,
              stage: bool | None = None) -> LandResult:
    """Land one file version: lease (committed), then lock, re-read, land_version and the new state in
    one transaction. With `stage` (default: STAGE_WHILE_LANDING) the file is typed in the same pass and
    staged in the same transaction (pending -> landed -> staged, one commit); if that part fails it is
    rolled back to its savepoint and the file is committed landed, for the stage step. A format error
    is recorded (failed, not retryable) and returned; anything else propagates (see run_file_step)."""
    stage = settings.stage_while_landing if stage is None else stage
    _boundary(conn)
    with _transaction(conn):
        record = ledger.get(conn, file_id)
        if not _landable(record):
            return LandResult(file_id, "already")
        ledger.set_application_name(conn, f"indici-ingest run {record.load_run_id} land file {file_id}")
        ledger.take_lease(conn, file_id, settings.file_lease_seconds, _holder("land"))
        _renew_run_lease(conn, record.load_run_id, settings)
    with bound(load_run_id=record.load_run_id, s3_key=record.s3_key, file_id=file_id):
        staged: StageResult | None = None
        tees: list[StagingTee] = []  # each is closed below, whatever happened (its thread and spools)

        def tee(hashed: ledger.FileRecord) -> StagingTee | None:
            made = staging_tee(conn, hashed, settings.typing_threads, settings.typing_during_raw_copy)
            if made is not None:
                tees.append(made)
            return made

        try:
            with _transaction(conn):
                ledger.lock(conn, LockSpace.LAND, file_id, timeout=settings.lock_timeout_seconds)
                record = ledger.get(conn, file_id, for_update=True)
                if not _landable(record):
                    return LandResult(file_id, "already")
                result = land_version(conn, s3_client, record, settings, tee=tee if stage else None)
                if result.status == FileStatus.DUPLICATE:
                    assert result.duplicate_of is not None and result.file_hash is not None
                    ledger.mark_duplicate(conn, file_id, duplicate_of=result.duplicate_of, file_hash=result.file_hash)
                else:
                    assert result.file_hash and result.encoding and result.rows_read is not None
                    assert result.landed_at is not None
                    ledger.mark_landed(conn, file_id, file_hash=result.file_hash, encoding=result.encoding,
                                       rows_read=result.rows_read, rows_raw=result.rows, landed_at=result.landed_at)
                    if result.tee is not None:
                        staged = _stage_in_pass(conn, file_id, result.tee)
        except IndiciFormatError as exc:
            detail = {"stage": "land", "kind": exc.kind, "row_number": exc.row_number, "expected": exc.expected,
                      "found": exc.found, "byte_offset": exc.byte_offset}
            with _transaction(conn):
                ledger.mark_failed(conn, file_id, f"{record.s3_key}: {exc.detail}", detail, retryable=False)
            log.error("file failed to land", kind=exc.kind, row_number=exc.row_number, error=exc.detail)
            return LandResult(file_id, "failed", error=exc.detail)
        finally:
            for made in tees:
                made.abandon(RuntimeError("the landing's pass ended"))
        log.info("file landed" if result.status == "landed" else f"file {result.status}", rows=result.rows,
                 encoding=result.encoding, spool_seconds=result.spool_seconds, copy_seconds=result.copy_seconds)
        if staged is not None:
            _log_staged(staged, in_pass=True)
        return result


def _stage_in_pass(conn: psycopg.Connection, file_id: int, tee: StagingTee) -> StageResult | None:
    """The file's typed rows (typed while it landed) into stg, and its new state, inside a savepoint of
    the landing's transaction (a repeated natural key is resolved there, by the second pass). None when
    that is not possible (the spool was lost, an error): the savepoint is rolled back and the file
    stays landed, for the stage step."""
    record = ledger.get(conn, file_id)
    if not tee.usable:
        log.warning("typing during the landing stopped; the stage step stages the file from raw",
                    error=type(tee.error).__name__ if tee.error else None)
        return None
    try:
        with conn.transaction():
            result, error = stage_version(conn, record, typed=tee)
            ledger.mark_staged(conn, file_id, staged=result.staged, rejected=result.rejected + result.superseded,
                               superseded=result.superseded, error=f"{record.s3_key}: {error}" if error else None)
    except Exception as exc:
        if conn.closed or conn.broken:
            raise
        log.warning("staging in the landing's pass failed; the stage step stages the file from raw",
                    error=type(exc).__name__)
        return None
    if error:
        return StageResult(file_id, "failed", result.staged, result.rejected, result.superseded, error)
    return result


def _log_staged(result: StageResult, *, in_pass: bool = False) -> None:
    if result.status == "failed":
        log.error("file failed its data-quality thresholds", error=result.error, in_pass=in_pass)
    else:
        log.info("file staged", staged=result.staged, rejected=result.rejected, superseded=result.superseded,
                 in_pass=in_pass)


def stage_file(conn: psycopg.Connection, file_id: int, settings: Settings | None = None) -> StageResult:
    """Stage one landed file: lease (committed), then lock, re-read, stage_version and the new state
    (staged, or failed by its data-quality thresholds) in one transaction."""
    from worker.settings import get_settings

    settings = settings or get_settings()
    _boundary(conn)
    with _transaction(conn):
        record = ledger.get(conn, file_id)
        if record.status != FileStatus.LANDED:
            return StageResult(file_id, "already")
        ledger.set_application_name(conn, f"indici-ingest run {record.load_run_id} stage file {file_id}")
        ledger.take_lease(conn, file_id, settings.file_lease_seconds, _holder("stage"))
        _renew_run_lease(conn, record.load_run_id, settings)
    with bound(load_run_id=record.load_run_id, s3_key=record.s3_key, file_id=file_id):
        with _transaction(conn):
            ledger.lock(conn, LockSpace.STAGE, file_id, timeout=settings.lock_timeout_seconds)
            record = ledger.get(conn, file_id, for_update=True)
            if record.status != FileStatus.LANDED:
                return StageResult(file_id, "already")
            result, error = stage_version(conn, record, threads=settings.typing_threads)
            ledger.mark_staged(conn, file_id, staged=result.staged, rejected=result.rejected + result.superseded,
                               superseded=result.superseded, error=f"{record.s3_key}: {error}" if error else None)
        if error:
            result = StageResult(file_id, "failed", result.staged, result.rejected, result.superseded, error)
        _log_staged(result)
        return result


def run_file_step(conn: psycopg.Connection, s3_client: Any, file_id: int, step: Step,
                  settings: Settings) -> StepOutcome:
    """One step of one file under the one failure rule (module docstring)."""
    with bound(file_id=file_id):
        try:
            if step is Step.LAND:
                land_file(conn, s3_client, file_id, settings)
            else:
                stage_file(conn, file_id, settings)
            status = FileStatus(ledger.get(conn, file_id).status)
            _boundary(conn)
            return StepOutcome(file_id, status)
        except Exception as exc:
            if conn.closed or conn.broken:
                raise  # nothing can be recorded on this connection: the driver retries or fails the run
            conn.rollback()
            transient = isinstance(exc, TRANSIENT_ERRORS)
            record = ledger.get(conn, file_id)
            message = f"{record.s3_key}: {type(exc).__name__}: {exc}"
            with _transaction(conn):
                ledger.mark_failed(conn, file_id, message,
                                   {"stage": step.value, "kind": "transient" if transient else "error"}, retryable=True)
            log.error("file step failed", stage=step.value, s3_key=record.s3_key, error=type(exc).__name__,
                      transient=transient)
            return StepOutcome(file_id, FileStatus.FAILED, retry=transient, error=message)


def process_file(conn: psycopg.Connection, s3_client: Any, file_id: int, settings: Settings) -> StepOutcome:
    """Land then stage one file (each step under run_file_step's rule); safe to repeat."""
    outcome = run_file_step(conn, s3_client, file_id, Step.LAND, settings)
    if outcome.status == FileStatus.LANDED:
        outcome = run_file_step(conn, s3_client, file_id, Step.STAGE, settings)
    return outcome


# -- merging, errors, closing -----------------------------------------------------------------------
MergePart = str  # "all" (merge_run: every staged file, one transaction), "dimensions", or a fact extract
ALL_PARTS, DIMENSIONS = "all", "dimensions"


def merge(conn: psycopg.Connection, run_id: int, settings: Settings, *, part: MergePart = ALL_PARTS,
          raise_transient: bool = False) -> dict[str, Any] | None:
    """Merge the run's staged files (and staged files that closed runs left) into core and mark them
    merged, in one transaction: all of them (`part` "all", the inline driver), or the dimensions, or one
    fact extract (the Celery driver: the dimensions first, then each fact extract in a task of its own,
    in parallel, each under its own lock). A failure rolls back that part, leaves its files staged for
    the next run, and is recorded on the run (which then closes failed); None is returned. A transient
    error propagates unrecorded when `raise_transient` (a Celery retry is coming); a missing or inactive
    NHI key (ConfigurationError) is recorded and propagates."""
    _boundary(conn)
    with bound(load_run_id=run_id, merge_part=part):
        try:
            with _transaction(conn):
                ledger.set_application_name(conn, f"indici-ingest run {run_id} merge {part}")
                # A merge may take longer than RUN_LEASE_SECONDS; it is bounded by the hard time limit.
                _renew_run_lease(conn, run_id, settings, settings.file_lease_seconds)
            if part not in (ALL_PARTS, DIMENSIONS):
                with _transaction(conn):  # the calendar days first, committed: parallel parts share them
                    merge_step.ensure_calendar_of_extract(conn, run_id, part)
            with _transaction(conn):
                if part == ALL_PARTS:
                    summary = merge_step.merge_run(conn, run_id, settings)
                elif part == DIMENSIONS:
                    summary = merge_step.merge_dimensions(conn, run_id, settings)
                else:
                    summary = merge_step.merge_facts_of_extract(conn, run_id, part, settings)
                ledger.mark_merged(conn, summary["file_ids"])
                _record_merge_summary(conn, run_id, summary)
            return summary
        except Exception as exc:
            if conn.closed or conn.broken or (raise_transient and isinstance(exc, TRANSIENT_ERRORS)):
                raise
            conn.rollback()
            log.error("merge failed", error=type(exc).__name__)
            if isinstance(exc, merge_step.OrphanError):  # what failed it stays on record in etl.dq_results
                with _transaction(conn):
                    merge_step.record_orphans(conn, run_id, exc)
            record_run_error(conn, run_id, f"merge: {type(exc).__name__}: {exc}")
            if isinstance(exc, ConfigurationError):
                raise
            return None


def staged_fact_extracts(conn: psycopg.Connection, run_id: int) -> list[str]:
    """The fact extracts the run's merge still has files of (one Celery merge task each)."""
    _boundary(conn)
    extracts = merge_step.staged_fact_extracts(conn, run_id)
    _boundary(conn)
    return extracts


_MERGE_TOTALS = ("files_merged", "inferred_members", "nhi_invalid", "seconds")


def _record_merge_summary(conn: psycopg.Connection, run_id: int, summary: dict[str, Any]) -> None:
    """The run's `merge` summary: per extract, and totals over the parts merged so far (the parts of a
    Celery run add up to what one inline merge of the same files records). The run's row is locked, so
    parallel parts add up instead of overwriting each other."""
    row = conn.execute("SELECT summary -> 'merge' FROM etl.load_runs WHERE load_run_id = %s FOR UPDATE",
                       (run_id,)).fetchone()
    before: dict[str, Any] = (row[0] if row else None) or {}
    merged = {
        **{key: round((before.get(key) or 0) + (summary.get(key) or 0), 3) for key in _MERGE_TOTALS},
        "extracts": {**(before.get("extracts") or {}), **summary.get("extracts", {})},
    }
    conn.execute("UPDATE etl.load_runs SET summary = coalesce(summary, '{}'::jsonb) || %s WHERE load_run_id = %s",
                 (Jsonb({"merge": merged}), run_id))


def record_run_error(conn: psycopg.Connection, run_id: int, error: str) -> None:
    """Remember a run-wide failure (planning, merge, a lost driver); close_run then marks the run failed.
    Appended to any earlier error, once (a redelivered message recording the same error adds nothing)."""
    _rollback(conn)
    error = error[:2000]
    with _transaction(conn):
        conn.execute(
            "UPDATE etl.load_runs SET error = CASE WHEN strpos(coalesce(error, ''), %(e)s) > 0 THEN error "
            "ELSE concat_ws('; ', error, %(e)s::text) END WHERE load_run_id = %(run)s AND status = 'running'",
            {"e": error, "run": run_id},
        )


def close_run(conn: psycopg.Connection, run_id: int) -> dict[str, Any]:
    """Close the run once: its status from its files (and a recorded run error: failed), its summary
    (with the plan's counts, already_done among them, in the same write), etl.health, then the
    anomaly and notification hooks. A closed run is returned as stored."""
    _boundary(conn)
    with _transaction(conn):
        row = conn.execute("SELECT status, summary, error FROM etl.load_runs WHERE load_run_id = %s FOR UPDATE",
                           (run_id,)).fetchone()
        if row is None:
            raise LookupError(f"no run {run_id} in etl.load_runs")
        if RunStatus(row[0]).final:
            return {"load_run_id": run_id, "status": row[0], **(row[1] or {})}
        previous, run_error = row[1] or {}, row[2]
        # Superseded versions are on record (summary: superseded_versions) but were never the run's work.
        files = [f for f in ledger.files_of_run(conn, run_id) if f.status != FileStatus.SUPERSEDED]
        by_status: dict[str, int] = {}
        for f in files:
            by_status[f.status] = by_status.get(f.status, 0) + 1
        not_ok = sum(by_status.get(s, 0) for s in ("failed", "pending", "landed"))
        status = (RunStatus.SUCCEEDED if not_ok == 0
                  else RunStatus.PARTIAL if not_ok < len(files) else RunStatus.FAILED)
        if run_error:  # planning or the merge failed: nothing of this run reached core
            status = RunStatus.FAILED
        check_run_transition(RunStatus.RUNNING, status)
        unparseable = conn.execute("SELECT count(*) FROM etl.skipped_keys WHERE load_run_id = %s",
                                   (run_id,)).fetchone()
        planned = previous.get("planned") or {}
        seconds = conn.execute("SELECT round(extract(epoch FROM clock_timestamp() - started_at)::numeric, 3)::float8 "
                               "FROM etl.load_runs WHERE load_run_id = %s", (run_id,)).fetchone()
        summary: dict[str, Any] = {
            "files": len(files),
            "by_status": by_status,
            "rows_read": sum(f.rows_read or 0 for f in files),
            "rows_staged": sum(f.rows_staged or 0 for f in files),
            "rows_rejected": sum(f.rows_rejected or 0 for f in files),
            "rows_superseded": sum(f.rows_superseded or 0 for f in files),
            "unparseable_keys": unparseable[0] if unparseable else 0,
            "failures": [{"file_id": f.file_id, "s3_key": f.s3_key, "error": f.error}
                         for f in files if f.status == FileStatus.FAILED],
            "error": run_error,
            "already_done": planned.get("already_done", 0),
            "superseded_versions": planned.get("superseded_versions", 0),
            "adopted": planned.get("adopted", 0),
            "first_load": planned.get("first_load", []),
            "merge": previous.get("merge"),
            "seconds": seconds[0] if seconds else None,
        }
        if previous.get("reconciled"):
            summary["reconciled"] = previous["reconciled"]
        if summary["first_load"]:
            summary["note"] = ("first load of " + ", ".join(summary["first_load"])
                               + ": every available batch was loaded")
        summary["anomalies"] = [a.as_dict() for a in anomalies.evaluate_run(conn, run_id)]  # ops hook (issue 9)
        if used := relaxed.uses(conn, run_id):  # ops hook (issue 9): each use of a relaxed threshold
            summary["relaxed_thresholds"] = used
        conn.execute(
            "UPDATE etl.load_runs SET status = %s, summary = %s, finished_at = now(), lease_expires_at = NULL "
            "WHERE load_run_id = %s AND status = 'running'",
            (status.value, Jsonb(summary), run_id),
        )
        _update_health(conn, run_id)
    notify.notify_run(conn, run_id)  # ops hook (issue 9): the run's summary to NOTIFY_URLS; never raises
    log.info("run finished", load_run_id=run_id, status=status.value, files=len(files))
    return {"load_run_id": run_id, "status": status.value, **summary}


# -- operator-driven runs (restage) ------------------------------------------------------------------
def open_operator_run(conn: psycopg.Connection, kind: str, params: dict[str, Any], settings: Settings) -> int:
    """A run an operator command drives itself in this process (restage): `running` with a lease, never
    joined (it has no selection), closed by close_run or fail_run like any other run."""
    _boundary(conn)
    with _transaction(conn):
        row = conn.execute(
            "INSERT INTO etl.load_runs (kind, params, lease_expires_at) "
            "VALUES (%s, %s, now() + make_interval(secs => %s)) RETURNING load_run_id",
            (kind, Jsonb(params), settings.run_lease_seconds),
        ).fetchone()
    assert row is not None
    log.info("run opened", load_run_id=row[0], kind=kind, driver="operator")
    return int(row[0])


def return_to_landed(conn: psycopg.Connection, run_id: int, file_ids: list[int],
                     clear: Callable[[psycopg.Connection, ledger.FileRecord], None],
                     audit: Callable[[psycopg.Connection], int]) -> int:
    """Restage: each file (staged, merged or failed with rows in raw) back to `landed` in run `run_id`,
    after `clear` removed what its staging wrote, and `audit`'s record of the operator's action (its id is
    returned): one transaction, under the merge lock (no merge reads those stg rows meanwhile) and each
    file's landing and staging locks (no worker is half-way through it)."""
    _boundary(conn)
    with _transaction(conn):
        ledger.lock(conn, LockSpace.MERGE, 0)
        for file_id in file_ids:
            ledger.lock(conn, LockSpace.LAND, file_id)
            ledger.lock(conn, LockSpace.STAGE, file_id)
            record = ledger.get(conn, file_id, for_update=True)
            clear(conn, record)
            ledger.mark_restaging(conn, file_id, run_id)
        action_id = audit(conn)
        conn.execute("UPDATE etl.load_runs SET params = params || %s WHERE load_run_id = %s",
                     (Jsonb({"operator_action_id": action_id, "files": file_ids}), run_id))
    return action_id


def _update_health(conn: psycopg.Connection, run_id: int) -> None:
    """An extract whose files in this run all succeeded records this run as its last success."""
    conn.execute(
        """
        INSERT INTO etl.health (extract, last_success_run_id, last_success_at, last_date_extracted, status)
        SELECT extract, %(run)s, now(), max(date_extracted), 'ok'
        FROM etl.load_run_files WHERE load_run_id = %(run)s AND status <> 'superseded'
        GROUP BY extract HAVING bool_and(status IN ('merged', 'duplicate'))
        ON CONFLICT (extract) DO UPDATE SET last_success_run_id = EXCLUDED.last_success_run_id,
            last_success_at = EXCLUDED.last_success_at,
            last_date_extracted = greatest(etl.health.last_date_extracted, EXCLUDED.last_date_extracted),
            status = 'ok', updated_at = now()
        """,
        {"run": run_id},
    )
    conn.execute(
        """
        INSERT INTO etl.health (extract, status)
        SELECT extract, 'failing' FROM etl.load_run_files WHERE load_run_id = %(run)s AND status <> 'superseded'
        GROUP BY extract HAVING NOT bool_and(status IN ('merged', 'duplicate'))
        ON CONFLICT (extract) DO UPDATE SET status = 'failing', updated_at = now()
        """,
        {"run": run_id},
    )


def fail_run(conn: psycopg.Connection, run_id: int, error: str) -> dict[str, Any]:
    """A run whose driver broke (discovery failed, a task raised after its retries, the process died):
    record why and close it, so it does not stay `running`."""
    record_run_error(conn, run_id, error)
    return close_run(conn, run_id)


def request_reprocess(conn: psycopg.Connection, file_id: int, reason: str, requested_by: str) -> None:
    """An operator's audited request to load a file version again (ledger.request_reprocess), committed."""
    with _transaction(conn):
        ledger.request_reprocess(conn, file_id, reason, requested_by)


# -- the reconciler ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Repair:
    """What the reconciler asks the driver to send for a run: `files` (their land/stage chains, then
    the merge and close), `close` (the merge and close: every file is final), or `plan` (the run was
    never planned: its start message was lost)."""

    run_id: int
    action: str  # files | close | plan
    file_ids: tuple[int, ...] = ()
    selection: dict[str, Any] | None = None


def reconcile(conn: psycopg.Connection, settings: Settings) -> list[Repair]:
    """Look at every running run whose lease has expired and no file of which is leased (its driver is
    gone: a lost worker, a lost chord message, a dead inline process):
      - an inline run is failed (its process cannot be resumed from here; a later run adopts its files);
      - a run given RECONCILE_ROUNDS repairs already is failed, naming the files left unfinished;
      - a run never planned is planned again (`plan`);
      - a run with pending or landed files gets them re-enqueued (`files`);
      - a run whose files are all final but which is still running gets its merge and close (`close`).
    Each repair renews the run's lease and counts a round; returns the repairs for the driver to send."""
    _boundary(conn)
    repairs: list[Repair] = []
    runs = conn.execute(
        """
        SELECT r.load_run_id, r.kind, r.params, r.summary, r.lease_expires_at FROM etl.load_runs r
        WHERE r.status = 'running' AND r.lease_expires_at <= now()
          AND NOT EXISTS (SELECT 1 FROM etl.load_run_files f WHERE f.load_run_id = r.load_run_id
                          AND f.lease_expires_at > now())
        ORDER BY r.load_run_id
        """
    ).fetchall()
    _boundary(conn)
    for run_id, kind, params, summary, expired in runs:
        summary = summary or {}
        rounds = int(summary.get("reconciled", 0))
        files = ledger.files_of_run(conn, run_id)
        _boundary(conn)
        open_files = [f.file_id for f in files if f.status in (FileStatus.PENDING, FileStatus.LANDED)]
        with bound(load_run_id=run_id):
            if (params or {}).get("driver") == "inline":
                log.warning("reconciler: the inline process driving the run stopped", lease_expired_at=str(expired))
                fail_run(conn, run_id, f"the inline process driving the run stopped (no sign of it since {expired})")
                continue
            if rounds >= RECONCILE_ROUNDS:
                log.warning("reconciler: giving up on the run", rounds=rounds, open_files=len(open_files))
                fail_run(conn, run_id, f"its work was lost: {len(open_files)} file(s) still unfinished after "
                                       f"{rounds} repairs by the reconciler (file ids {open_files[:20]})")
                continue
            if summary.get("planned") is None:
                selection = {k: (params or {}).get(k) for k in ("date_from", "date_to", "extracts", "key_prefix")}
                repair = Repair(run_id, "plan", selection={"kind": kind, **selection})
            elif open_files:
                repair = Repair(run_id, "files", tuple(open_files))
            else:
                repair = Repair(run_id, "close")
            with _transaction(conn):
                conn.execute(
                    "UPDATE etl.load_runs SET summary = coalesce(summary, '{}'::jsonb) || %s, "
                    "lease_expires_at = now() + make_interval(secs => %s) "
                    "WHERE load_run_id = %s AND status = 'running'",
                    (Jsonb({"reconciled": rounds + 1}), settings.run_lease_seconds, run_id),
                )
            log.warning("reconciler: repairing a run whose driver is gone", action=repair.action,
                        files=len(repair.file_ids), round=rounds + 1)
            repairs.append(repair)
    return repairs
