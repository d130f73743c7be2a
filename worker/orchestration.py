"""Plain functions around the Celery path of a run, used by the CLI, the ops script and the tasks.

- `enqueue_run(settings, selection) -> run_id`: the run's etl.load_runs row is created in Postgres
  first (so the caller knows its id at once), then `start_run` is sent to the workers.
- `wait_for_run(settings, run_id, ...)`: polls etl.load_runs (Postgres is the truth about a run; Celery
  results are never read) until the run is no longer 'running'; `FileProgress` prints files as they end.
- For the tasks: `plan_or_resume`, `record_file_failure`, `file_outcome`, `record_run_error`,
  `finalise`, `fail_run`. Each is safe to call twice (a redelivered message calls it again).

Celery itself is only imported by `enqueue_run` (the --inline path never needs a broker).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import date
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from worker.io.db import connect
from worker.log import bound, get_logger
from worker.pipeline import ledger
from worker.pipeline.run import RunPlan, Selection, finalise_run, plan_run
from worker.settings import Settings

log = get_logger(__name__)

# First key of the two-key advisory lock that serialises the planning of one run (second key: run id).
# ledger.LockSpace uses 1-3 (land, stage, merge); 4 is this module's.
PLAN_LOCK_SPACE = 4

# A file whose chain has ended, for progress: staged files still wait for the merge, but their own
# work is done.
FILE_DONE = ("staged", "merged", "duplicate", "skipped", "failed")


class EnqueueError(RuntimeError):
    """The run row exists but the message could not be sent (the row is marked failed)."""


class RunTimeout(TimeoutError):
    """The run was still running when the wait ended."""


# -- selection <-> task arguments ----------------------------------------------------------------------
def selection_to_json(selection: Selection) -> dict[str, Any]:
    """The selection as task arguments: strings, ISO dates, a list of extract names. Nothing else."""
    return {
        "kind": selection.kind,
        "date_from": selection.date_from.isoformat() if selection.date_from else None,
        "date_to": selection.date_to.isoformat() if selection.date_to else None,
        "extracts": list(selection.extracts),
        "key_prefix": selection.key_prefix,
    }


def selection_from_json(data: dict[str, Any]) -> Selection:
    unknown = set(data) - {"kind", "date_from", "date_to", "extracts", "key_prefix"}
    if unknown:
        raise ValueError(f"unknown selection fields: {sorted(unknown)}")
    kind = str(data.get("kind") or "nightly")
    if kind not in ("nightly", "backfill"):
        raise ValueError(f"unknown selection kind {kind!r}")
    return Selection(
        kind=kind,
        date_from=date.fromisoformat(data["date_from"]) if data.get("date_from") else None,
        date_to=date.fromisoformat(data["date_to"]) if data.get("date_to") else None,
        extracts=tuple(str(e) for e in data.get("extracts") or ()),
        key_prefix=str(data["key_prefix"]) if data.get("key_prefix") else None,
    )


# -- creating and enqueuing a run ----------------------------------------------------------------------
def create_run(conn: psycopg.Connection, selection: Selection, request_key: str | None = None) -> int:
    """The run's etl.load_runs row. With `request_key` (e.g. the Celery message id of beat's nightly
    task) the same key always gives the same run, so a redelivered message does not start a second one."""
    params = selection.as_params()
    if request_key is None:
        return ledger.start_run(conn, selection.kind, params)
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (request_key,))
    row = conn.execute(
        "SELECT load_run_id FROM etl.load_runs WHERE params ->> 'request_key' = %s", (request_key,)
    ).fetchone()
    if row is not None:
        conn.commit()
        return row[0]
    return ledger.start_run(conn, selection.kind, {**params, "request_key": request_key})  # commits


def enqueue_run(settings: Settings, selection: Selection) -> int:
    """Create the run in Postgres, then send `start_run`; returns the run id.

    The message goes to the broker the Celery app is configured with (worker/app.py, from the same
    environment as `settings`)."""
    from worker.tasks import start_run

    with connect(settings) as conn:
        run_id = create_run(conn, selection)
        try:
            start_run.delay(run_id, selection_to_json(selection))
        except Exception as exc:  # broker down or misconfigured: do not leave a 'running' orphan
            message = f"could not enqueue the run: {type(exc).__name__}: {exc}"
            _close_run(conn, run_id, "failed", message)
            raise EnqueueError(message) from exc
    log.info("run enqueued", load_run_id=run_id, kind=selection.kind)
    return run_id


def _close_run(conn: psycopg.Connection, run_id: int, status: str, error: str) -> None:
    conn.rollback()
    conn.execute(
        "UPDATE etl.load_runs SET status = %s, error = %s, finished_at = now() WHERE load_run_id = %s",
        (status, error, run_id),
    )
    conn.commit()


# -- steps the tasks call ------------------------------------------------------------------------------
def plan_or_resume(
    conn: psycopg.Connection, s3_client, settings: Settings, run_id: int, selection: Selection
) -> RunPlan | None:
    """Plan the run once (discovery + ledger); a second call for the same run returns the files of the
    run that are not finished yet instead of discovering again; None when the run has already ended.

    Why a second call happens: `start_run` redelivered after a worker died, or the same run enqueued
    twice. Dispatching those files again is safe (their tasks find the work done, under the locks), and
    it is what gets a run going again if the first dispatch was lost.
    """
    conn.commit()
    conn.execute("SELECT pg_advisory_lock(%s, %s)", (PLAN_LOCK_SPACE, run_id))  # session lock: plan_run commits
    conn.commit()
    try:
        row = conn.execute(
            "SELECT status, summary FROM etl.load_runs WHERE load_run_id = %s", (run_id,)
        ).fetchone()
        conn.commit()
        if row is None:
            raise LookupError(f"no run {run_id} in etl.load_runs")
        status, summary = row
        if status != "running":
            log.info("run already finished; nothing to start", status=status)
            return None
        planned = (summary or {}).get("planned")
        if planned is not None:
            open_files = [
                f.file_id for f in ledger.files_of_run(conn, run_id)
                if f.status not in ledger.DONE_STATES and not (f.status == "failed" and not f.retryable)
            ]
            conn.commit()
            log.info("run already planned; dispatching its unfinished files again", files=len(open_files))
            return RunPlan(run_id, open_files, planned.get("already_done", 0), planned.get("unparseable", 0))
        plan = plan_run(conn, s3_client, settings, selection, run_id=run_id)
        # Recorded in the run's summary (finalise replaces it) so a second call knows the plan exists.
        conn.execute(
            "UPDATE etl.load_runs SET summary = %s WHERE load_run_id = %s",
            (Jsonb({"planned": {"files": len(plan.file_ids), "already_done": plan.already_done,
                                "unparseable": plan.unparseable}}), run_id),
        )
        conn.commit()
        return plan
    finally:
        if not conn.closed and not conn.broken:
            conn.rollback()
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", (PLAN_LOCK_SPACE, run_id))
            conn.commit()


def file_outcome(conn: psycopg.Connection, file_id: int) -> dict[str, Any]:
    """What a per-file task returns: ids and the status, nothing from the file's rows."""
    record = ledger.get(conn, file_id)
    conn.commit()
    return {"file_id": file_id, "status": record.status}


def record_file_failure(conn: psycopg.Connection, file_id: int, exc: BaseException, stage: str) -> dict[str, Any]:
    """A per-file task's last word on an exception: the file is marked failed (retryable: the next run
    tries it again) unless a step already recorded why; the task then returns instead of raising, so
    the run's chord still reaches its merge and finalisation. Same rule as run_inline."""
    conn.rollback()
    record = ledger.get(conn, file_id)
    with bound(s3_key=record.s3_key):
        if record.status != "failed":
            ledger.mark_failed(conn, file_id, f"{record.s3_key}: {type(exc).__name__}: {exc}",
                               {"stage": stage}, retryable=True)
        log.error("file processing failed", file_id=file_id, stage=stage, error=type(exc).__name__)
    return file_outcome(conn, file_id)


def record_run_error(conn: psycopg.Connection, run_id: int, error: str) -> None:
    """Remember a run-wide failure (discovery, merge); `finalise` then marks the run failed."""
    conn.rollback()
    conn.execute(
        "UPDATE etl.load_runs SET error = concat_ws('; ', error, %s::text) WHERE load_run_id = %s",
        (error[:2000], run_id),
    )
    conn.commit()


def finalise(conn: psycopg.Connection, run_id: int) -> dict[str, Any]:
    """`finalise_run` plus what only the Celery path knows: a recorded run-wide error makes the run
    failed, the plan's counts are kept, and the duration comes from the run's own start time."""
    conn.commit()
    row = conn.execute("SELECT summary FROM etl.load_runs WHERE load_run_id = %s", (run_id,)).fetchone()
    conn.commit()
    if row is None:
        raise LookupError(f"no run {run_id} in etl.load_runs")
    previous = row[0] or {}
    # From the plan, or from an earlier finalisation of the same run (a redelivered body finalises again).
    already_done = (previous.get("planned") or {}).get("already_done", previous.get("already_done", 0))
    summary = finalise_run(conn, run_id, extra={"already_done": already_done})
    seconds, error = conn.execute(
        "SELECT round(extract(epoch FROM finished_at - started_at)::numeric, 3)::float8, error "
        "FROM etl.load_runs WHERE load_run_id = %s",
        (run_id,),
    ).fetchone()
    extra: dict[str, Any] = {"already_done": already_done, "seconds": seconds}
    status = summary["status"]
    if error:
        status, extra["error"] = "failed", error
    conn.execute(
        "UPDATE etl.load_runs SET status = %s, summary = summary || %s WHERE load_run_id = %s",
        (status, Jsonb(extra), run_id),
    )
    conn.commit()
    log.info("run finished", load_run_id=run_id, status=status, files=summary["files"])
    return {**summary, **extra, "status": status}


def fail_run(conn: psycopg.Connection, run_id: int, error: str) -> dict[str, Any]:
    """A run whose orchestration broke (a task raised after its retries): record why and finalise it,
    so it does not stay 'running' for ever."""
    record_run_error(conn, run_id, error)
    return finalise(conn, run_id)


# -- waiting and progress ------------------------------------------------------------------------------
FilePrinter = Callable[[int, int, ledger.FileRecord], None]


def print_file(index: int, total: int, record: ledger.FileRecord) -> None:
    """One terminal line per finished file: `[done/total] status extract rows key`."""
    rows = record.rows_read if record.rows_read is not None else "-"
    print(f"[{index}/{total}] {record.status:<9} {record.extract:<22} rows={rows}  {record.s3_key}", flush=True)
    if record.status == "failed" and record.error:
        print(f"        error: {record.error}", flush=True)


class FileProgress:
    """Prints each file of a run once when its chain ends (again if a failed file is later retried
    successfully), counting files done out of the run's total from etl.load_run_files."""

    def __init__(self, run_id: int, printer: FilePrinter = print_file) -> None:
        self.run_id = run_id
        self.printer = printer
        self.shown: dict[int, str] = {}

    def update(self, conn: psycopg.Connection) -> tuple[int, int]:
        files = ledger.files_of_run(conn, self.run_id)
        for record in files:
            if record.status not in FILE_DONE:
                continue
            last = self.shown.get(record.file_id)
            if last is None or (last == "failed" and record.status != "failed"):
                self.shown[record.file_id] = record.status
                self.printer(len(self.shown), len(files), record)
        done = sum(1 for f in files if f.status in FILE_DONE)
        return done, len(files)


def wait_for_run(
    settings: Settings,
    run_id: int,
    timeout: float | None = None,
    poll: float = 2.0,
    progress: FileProgress | None = None,
) -> dict[str, Any]:
    """Block until the run is no longer 'running' in etl.load_runs; returns its summary
    (`load_run_id`, `status` and the stored summary). Raises RunTimeout after `timeout` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with connect(settings, autocommit=True) as conn:  # autocommit: every poll sees the latest commit
        while True:
            row = conn.execute(
                "SELECT status, summary, error FROM etl.load_runs WHERE load_run_id = %s", (run_id,)
            ).fetchone()
            if row is None:
                raise LookupError(f"no run {run_id} in etl.load_runs")
            if progress is not None:
                progress.update(conn)
            status, summary, error = row
            if status != "running":
                result = {"load_run_id": run_id, "status": status, **(summary or {})}
                if error and "error" not in result:
                    result["error"] = error
                return result
            if deadline is not None and time.monotonic() >= deadline:
                raise RunTimeout(f"run {run_id} is still running after {timeout:g}s")
            time.sleep(poll)
