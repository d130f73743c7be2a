"""Plain functions around the Celery path of a run, used by the CLI, the ops script and the demo.

- `enqueue_run(settings, selection) -> run_id`: the run is opened in Postgres first (so the caller
  knows its id at once; a live run of the same selection is joined instead), then `indici.start_run`
  is sent to the workers, by name.
- `missing_consumers(settings)`: which of the run's queues no worker consumes (asked of the workers
  with Celery's remote control, within seconds).
- `wait_for_run(settings, run_id, ...)`: polls etl.load_runs (Postgres is the truth about a run; Celery
  results are never read) until the run is no longer 'running'; `FileProgress` prints files as they end.

Every state change is worker/pipeline/lifecycle.py's; this module only sends, asks and reads. It never
imports worker.tasks (tasks are sent by name), so the two cannot import each other.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import date
from typing import Any, Protocol

import psycopg

from worker.io.db import connect
from worker.log import get_logger
from worker.pipeline import ledger, lifecycle
from worker.pipeline.lifecycle import FileStatus, Selection
from worker.settings import Settings

log = get_logger(__name__)

# Task names (worker/tasks.py) and queues (worker/app.py): sent by name, no import of the tasks.
START_RUN = "indici.start_run"
FILES_QUEUE = "indici.files"
MERGES_QUEUE = "indici.merges"

# A file whose chain has ended, for progress: staged files still wait for the merge, but their own
# work is done.
FILE_DONE = tuple(s.value for s in FileStatus if s.final_for_run)


class EnqueueError(RuntimeError):
    """The run row exists but the message could not be sent (the run is closed as failed)."""


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
def create_run(conn: psycopg.Connection, selection: Selection, settings: Settings | None = None,
               request_key: str | None = None) -> int:
    """Open the run (lifecycle.open_run, Celery-driven); returns its id (a joined run's id)."""
    from worker.settings import get_settings

    return lifecycle.open_run(conn, selection, settings or get_settings(), driver="celery",
                              request_key=request_key).run_id


def send(name: str, args: tuple[Any, ...]) -> None:
    """Send a task by name through the app's routes (worker/app.py)."""
    from worker.app import app

    app.send_task(name, args)


def enqueue_run(settings: Settings, selection: Selection) -> int:
    """Open the run in Postgres, then send `indici.start_run`; returns the run id. A live run of the
    same selection is joined: its id is returned and nothing is sent."""
    with connect(settings) as conn:
        opened = lifecycle.open_run(conn, selection, settings, driver="celery")
        if opened.joined:
            log.info("a run of the same selection is going on; joined it", load_run_id=opened.run_id)
            return opened.run_id
        try:
            send(START_RUN, (opened.run_id, selection_to_json(selection)))
        except Exception as exc:  # broker down or misconfigured: do not leave a 'running' orphan
            message = f"could not enqueue the run: {type(exc).__name__}: {exc}"
            lifecycle.fail_run(conn, opened.run_id, message)
            raise EnqueueError(message) from exc
    log.info("run enqueued", load_run_id=opened.run_id, kind=selection.kind)
    return opened.run_id


def missing_consumers(timeout: float = 2.0, queues: tuple[str, ...] = (FILES_QUEUE, MERGES_QUEUE)) -> list[str]:
    """The queues of a run that no live worker of this broker consumes (all of them when no worker
    answers within `timeout` seconds)."""
    from worker.app import app

    try:
        answers = app.control.inspect(timeout=timeout).active_queues() or {}
    except Exception as exc:  # the broker itself does not answer: the enqueue already said so
        log.warning("could not ask the workers for their queues", error=type(exc).__name__)
        answers = {}
    consumed = {q.get("name") for queues_of_worker in answers.values() for q in (queues_of_worker or [])}
    return [q for q in queues if q not in consumed]


# -- waiting and progress ------------------------------------------------------------------------------
FilePrinter = Callable[[int, int, ledger.FileRecord], None]


def print_file(index: int, total: int, record: ledger.FileRecord) -> None:
    """One terminal line per finished file: `[done/total] status extract rows key`."""
    rows = record.rows_read if record.rows_read is not None else "-"
    print(f"[{index}/{total}] {record.status:<9} {record.extract:<22} rows={rows}  {record.s3_key}", flush=True)
    if record.status == "failed" and record.error:
        print(f"        error: {record.error}", flush=True)


class RunProgressView(Protocol):
    """What `wait_for_run` shows progress through: FileProgress here, worker.progress.RunProgress at
    a terminal. `update` reads the ledger and returns (files done, files in the run)."""

    def update(self, conn: psycopg.Connection) -> tuple[int, int]: ...


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


def run_outcome(conn: psycopg.Connection, run_id: int) -> dict[str, Any] | None:
    """The run as stored: `load_run_id`, `status` and its summary (the plan while it runs); None when
    there is no such run."""
    row = conn.execute(
        "SELECT status, summary, error, started_at, finished_at FROM etl.load_runs WHERE load_run_id = %s",
        (run_id,),
    ).fetchone()
    if row is None:
        return None
    status, summary, error, started, finished = row
    result = {"load_run_id": run_id, "status": status, **(summary or {})}
    if error and "error" not in result:
        result["error"] = error
    if status == "running":
        result["started_at"] = started.isoformat()
    return result


def wait_for_run(
    settings: Settings,
    run_id: int,
    timeout: float | None = None,
    poll: float = 2.0,
    progress: RunProgressView | None = None,
) -> dict[str, Any]:
    """Block until the run is no longer 'running' in etl.load_runs; returns its summary
    (`load_run_id`, `status` and the stored summary). Raises RunTimeout after `timeout` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with connect(settings, autocommit=True) as conn:  # autocommit: every poll sees the latest commit
        while True:
            result = run_outcome(conn, run_id)
            if result is None:
                raise LookupError(f"no run {run_id} in etl.load_runs")
            if progress is not None:
                progress.update(conn)
            if result["status"] != "running":
                return result
            if deadline is not None and time.monotonic() >= deadline:
                raise RunTimeout(f"run {run_id} is still running after {timeout:g}s")
            time.sleep(poll)
