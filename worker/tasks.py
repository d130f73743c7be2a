"""Celery tasks: thin, typed wrappers over the plain pipeline functions.

Every task takes only ids and plain JSON (run id, file id, a selection of dates and strings): never
rows, NHIs or secrets, because task arguments are stored in Redis and shown by Flower. Each task opens
its own connection and S3 client, calls one plain function, and returns a small JSON dict.

The shape of a run (PRODUCT.md):

    start_run(run_id, selection)                      discovery + ledger, then replaced by:
      chord(
        [chain(land_file(run, f1), stage_file(run, f1)),  one chain per file
         chain(land_file(run, f2), stage_file(run, f2)), ...],
        chain(merge_run(run), finalise_run(run)).on_error(fail_run(run)))

Failures, and why the chord body still runs:
- A bad file is not an exception here: land/stage record it in the ledger (failed, with the reason)
  and the task returns its status, so the chord completes and the run ends 'partial'.
- Infrastructure errors (Postgres or S3 unreachable) are retried by Celery with exponential backoff
  and jitter, a bounded number of times. On the last attempt the task records the failure (the file
  stays retryable for the next run) and returns instead of raising, for the same reason.
- Only if even that recording fails (Postgres down for good) does a task raise. Then Celery does not
  run the chord body; it calls the body's errback, `fail_run`, which finalises the run as failed once
  Postgres is back, so a run never stays 'running' because of a lost chord.
- `merge_run` is one task because merge.py offers one function, `merge_run` (dimensions first, then
  facts, in one transaction under the run-wide merge lock). A merge failure is recorded on the run
  and `finalise_run` marks the run failed; its staged files are merged by the next run.

Redelivery (late acks) means any task can run twice, or at the same time as a copy of itself: the
plain functions are idempotent under Postgres advisory locks and unique constraints, which is what
guarantees process-once, not Celery. No task ever waits on another task's result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import botocore.exceptions
import psycopg
from celery import Task, chain, chord
from celery.canvas import Signature

from worker import orchestration
from worker.app import app
from worker.io.db import connect
from worker.io.s3 import make_client
from worker.log import bound, get_logger
from worker.pipeline import ledger
from worker.pipeline.land import land_file as land_plain
from worker.pipeline.merge import merge_run as merge_plain
from worker.pipeline.run import Selection
from worker.pipeline.stage import stage_file as stage_plain
from worker.preflight import check_plan_keys
from worker.settings import Settings, get_settings

log = get_logger(__name__)

# Worth retrying: the service on the other end may come back. (OSError covers socket errors and the
# landing's own "the spooled copy changed" check, which it marks retryable.)
INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,
    OSError,
)


class PipelineTask(Task):
    """Retry policy of every task: up to 6 retries, waiting a random time up to 5, 10, 20, 40, 80, 160 s
    (exponential backoff, full jitter so a fleet of failed tasks does not retry in step): a few minutes
    for a restarting database or S3 endpoint before the failure is recorded."""

    autoretry_for = INFRASTRUCTURE_ERRORS
    retry_backoff = 5
    retry_backoff_max = 600  # also well inside the broker's visibility timeout (worker/app.py)
    retry_jitter = True
    max_retries = 6

    def final_attempt(self) -> bool:
        return self.request.retries >= self.max_retries


def _settings() -> Settings:
    return get_settings()


def _guarded(task: PipelineTask, work: Callable[[], dict[str, Any]],
             on_failure: Callable[[BaseException], dict[str, Any]]) -> dict[str, Any]:
    """Run `work`; an infrastructure error is re-raised for Celery's retry until the final attempt;
    then, and for any other exception, `on_failure` records it and its result is returned."""
    try:
        return work()
    except INFRASTRUCTURE_ERRORS as exc:
        if not task.final_attempt():
            log.warning("infrastructure error; the task will be retried", error=type(exc).__name__,
                        retries=task.request.retries)
            raise
        failure: BaseException = exc
    except Exception as exc:  # a bug or a bad file the step did not classify: record, do not raise
        failure = exc
    return on_failure(failure)


# -- a run ---------------------------------------------------------------------------------------------
def run_signature(run_id: int, file_ids: list[int]) -> Signature:
    """The canvas of a planned run. Immutable signatures (.si): no task receives another's result."""
    body = chain(merge_run.si(run_id), finalise_run.si(run_id)).on_error(fail_run.si(run_id))
    if not file_ids:
        return body
    header = [chain(land_file.si(run_id, file_id), stage_file.si(run_id, file_id)) for file_id in file_ids]
    return chord(header, body)


def _plan_and_dispatch(task: PipelineTask, run_id: int, selection: Selection) -> dict[str, Any]:
    settings = _settings()
    with bound(load_run_id=run_id):
        def plan() -> dict[str, Any]:
            with connect(settings) as conn:
                result = orchestration.plan_or_resume(conn, make_client(settings), settings, run_id, selection)
                if result is not None:  # ops hook (issue 9): NHI_HMAC_KEY before any file of the plan lands
                    check_plan_keys(conn, settings, result.file_ids)
            if result is None:
                return {"load_run_id": run_id, "dispatched": False, "reason": "run already finished"}
            return {"load_run_id": run_id, "dispatched": True, "file_ids": result.file_ids}

        def fail(exc: BaseException) -> dict[str, Any]:
            with connect(settings) as conn:
                summary = orchestration.fail_run(conn, run_id, f"planning: {type(exc).__name__}: {exc}")
            return {"load_run_id": run_id, "dispatched": False, "status": summary["status"]}

        outcome = _guarded(task, plan, fail)
        if not outcome.get("dispatched"):
            return outcome
        file_ids = outcome["file_ids"]
        log.info("run dispatched", files=len(file_ids))
    # Outside every try: replace() ends this task by raising Ignore; the chord takes over its id.
    return task.replace(run_signature(run_id, file_ids))


@app.task(bind=True, base=PipelineTask, name="indici.start_run")
def start_run(self: PipelineTask, run_id: int, selection: dict[str, Any]) -> dict[str, Any]:
    """Discover and register the run's files, then become the run's chord."""
    try:
        parsed = orchestration.selection_from_json(selection)
    except (TypeError, ValueError) as exc:  # a malformed message: end the run instead of leaving it open
        with bound(load_run_id=run_id), connect(_settings()) as conn:
            summary = orchestration.fail_run(conn, run_id, f"bad selection: {exc}")
        return {"load_run_id": run_id, "dispatched": False, "status": summary["status"]}
    return _plan_and_dispatch(self, run_id, parsed)


@app.task(bind=True, base=PipelineTask, name="indici.nightly_run")
def nightly_run(self: PipelineTask) -> dict[str, Any]:
    """What beat enqueues: a nightly run. The run row is keyed by this message's id, so a redelivered
    message continues the same run instead of starting another."""
    selection = Selection(kind="nightly")
    with connect(_settings()) as conn:
        run_id = orchestration.create_run(conn, selection, request_key=f"celery:{self.request.id}")
    return _plan_and_dispatch(self, run_id, selection)


# -- one file ------------------------------------------------------------------------------------------
def _file_step(task: PipelineTask, run_id: int, file_id: int, stage: str,
               step: Callable[[psycopg.Connection, Settings], Any]) -> dict[str, Any]:
    settings = _settings()
    with bound(load_run_id=run_id, file_id=file_id):
        def work() -> dict[str, Any]:
            with connect(settings) as conn:
                record = ledger.get(conn, file_id)
                conn.commit()
                with bound(s3_key=record.s3_key):
                    step(conn, settings)
                    return orchestration.file_outcome(conn, file_id)

        def record(exc: BaseException) -> dict[str, Any]:
            with connect(settings) as conn:  # a new connection: the old one may be what broke
                return orchestration.record_file_failure(conn, file_id, exc, stage)

        return _guarded(task, work, record)


@app.task(bind=True, base=PipelineTask, name="indici.land_file")
def land_file(self: PipelineTask, run_id: int, file_id: int) -> dict[str, Any]:
    """S3 object version -> raw (once: the ledger's lock and state decide)."""
    return _file_step(self, run_id, file_id, "land",
                      lambda conn, settings: land_plain(conn, make_client(settings), file_id, settings))


@app.task(bind=True, base=PipelineTask, name="indici.stage_file")
def stage_file(self: PipelineTask, run_id: int, file_id: int) -> dict[str, Any]:
    """raw -> stg + rejects for a landed file; does nothing for a file that did not land."""
    return _file_step(self, run_id, file_id, "stage", lambda conn, settings: stage_plain(conn, file_id))


# -- the chord body ------------------------------------------------------------------------------------
@app.task(bind=True, base=PipelineTask, name="indici.merge_run")
def merge_run(self: PipelineTask, run_id: int) -> dict[str, Any]:
    """stg -> core for the run's staged files: dimensions, then facts (merge.merge_run)."""
    settings = _settings()
    with bound(load_run_id=run_id):
        def work() -> dict[str, Any]:
            with connect(settings) as conn:
                summary = merge_plain(conn, run_id, settings)
            return {"load_run_id": run_id, "status": "merged", "files_merged": summary["files_merged"],
                    "inferred_members": summary["inferred_members"], "nhi_invalid": summary["nhi_invalid"],
                    "seconds": summary["seconds"]}

        def record(exc: BaseException) -> dict[str, Any]:
            log.error("merge failed", error=type(exc).__name__)
            with connect(settings) as conn:
                orchestration.record_run_error(conn, run_id, f"merge: {type(exc).__name__}: {exc}")
            return {"load_run_id": run_id, "status": "failed", "error": type(exc).__name__}

        return _guarded(self, work, record)


@app.task(bind=True, base=PipelineTask, name="indici.finalise_run")
def finalise_run(self: PipelineTask, run_id: int) -> dict[str, Any]:
    """The run's status from its files (and any recorded run-wide error), summary, etl.health."""
    with bound(load_run_id=run_id), connect(_settings()) as conn:
        summary = orchestration.finalise(conn, run_id)
    return {"load_run_id": run_id, "status": summary["status"], "files": summary["files"]}


@app.task(bind=True, base=PipelineTask, name="indici.fail_run")
def fail_run(self: PipelineTask, run_id: int) -> dict[str, Any]:
    """Errback of the chord body: a task raised after its retries, so the body did not run."""
    with bound(load_run_id=run_id), connect(_settings()) as conn:
        summary = orchestration.fail_run(
            conn, run_id, "a task of the run failed after its retries; see the worker log")
    return {"load_run_id": run_id, "status": summary["status"]}
