"""Celery tasks: a thin, typed driver over worker/pipeline/lifecycle.py (the `--inline` driver is
worker/pipeline/run.py; both call the same functions, so both runs end the same).

Every task takes only ids and plain JSON (run id, file id, a selection of dates and strings): never
rows, NHIs or secrets, because task arguments are stored in Redis and shown by Flower. Each task opens
its own connection and S3 client, calls one lifecycle function, and returns a small JSON dict.

The shape of a run (PRODUCT.md), queues in brackets (worker/app.py routes them):

    start_run(run_id, selection)                      [merges] plan, then replaced by:
      chord(
        [chain(land_file(run, f1), stage_file(run, f1)),  [files] one chain per file
         chain(land_file(run, f2), stage_file(run, f2)), ...],
        chain(merge_dimensions(run), finalise_run(run)).on_error(fail_run(run)))   [merges]
          merge_dimensions becomes group(merge_facts(run, extract) per fact extract with staged files)
    reconcile()                                       [merges] beat, every few minutes

Failures (the rule itself is lifecycle.run_file_step's; this only decides when to retry):
- A bad file is not an exception: the lifecycle records it failed and the task returns its status,
  so the chord completes and the run ends 'partial'.
- A transient error (Postgres or S3 unreachable) is recorded (failed, retryable) and the task retried
  with exponential backoff and full jitter, a bounded number of times; on the last attempt it returns.
- Only if even the recording fails (Postgres down for good) does a task raise. Then Celery does not
  run the chord body; it calls the body's errback, `fail_run`, which closes the run as failed once
  Postgres is back; if that is lost too, the reconciler closes the run when its lease expires.

Redelivery (late acks) means any task can run twice, or at the same time as a copy of itself: the
lifecycle functions are idempotent under Postgres advisory locks, leases and unique constraints,
which is what guarantees process-once, not Celery. No task ever waits on another task's result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Task, chain, chord, group
from celery.canvas import Signature
from celery.utils.time import get_exponential_backoff_interval

from worker import orchestration
from worker.app import app
from worker.io.db import connect
from worker.io.s3 import make_client
from worker.log import bound, get_logger
from worker.pipeline import lifecycle
from worker.pipeline.lifecycle import TRANSIENT_ERRORS, Selection, Step
from worker.pipeline.nztime import nz_today
from worker.preflight import check_plan_keys
from worker.settings import Settings, get_settings

log = get_logger(__name__)

INFRASTRUCTURE_ERRORS = TRANSIENT_ERRORS


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
        return bool(self.request.retries >= self.max_retries)

    def retry_later(self) -> None:
        """Retry this task after the backoff (raises celery.exceptions.Retry)."""
        countdown = get_exponential_backoff_interval(self.retry_backoff, self.request.retries,
                                                     self.retry_backoff_max, self.retry_jitter)
        raise self.retry(countdown=countdown)


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
    except Exception as exc:  # a bug the lifecycle did not classify: record, do not raise
        failure = exc
    return on_failure(failure)


# -- a run ---------------------------------------------------------------------------------------------
def close_signature(run_id: int) -> Signature:
    """Merge, then close. `merge_dimensions` replaces itself with one `merge_facts` task per fact
    extract with staged files (a group: they run in parallel, each under its own lock), and the chain
    goes on to `finalise_run` when all of them have ended."""
    return chain(merge_dimensions.si(run_id), finalise_run.si(run_id)).on_error(fail_run.si(run_id))


def run_signature(run_id: int, file_ids: list[int]) -> Signature:
    """The canvas of a planned run. Immutable signatures (.si): no task receives another's result."""
    body = close_signature(run_id)
    if not file_ids:
        return body
    header = [chain(land_file.si(run_id, file_id), stage_file.si(run_id, file_id)) for file_id in file_ids]
    return chord(header, body)


def _plan_and_dispatch(task: PipelineTask, run_id: int, selection: Selection) -> dict[str, Any]:
    settings = _settings()
    with bound(load_run_id=run_id):
        def plan() -> dict[str, Any]:
            with connect(settings) as conn:
                result = lifecycle.plan_run(conn, make_client(settings), settings, selection, run_id)
                if result is not None:  # ops hook (issue 9): NHI_HMAC_KEY before any file of the plan lands
                    check_plan_keys(conn, settings, result.file_ids)
            if result is None:
                return {"load_run_id": run_id, "dispatched": False, "reason": "run already finished"}
            return {"load_run_id": run_id, "dispatched": True, "file_ids": result.file_ids}

        def fail(exc: BaseException) -> dict[str, Any]:
            log.error("planning failed; the run is closed as failed", error=type(exc).__name__, detail=str(exc)[:500])
            with connect(settings) as conn:
                summary = lifecycle.fail_run(conn, run_id, f"planning: {type(exc).__name__}: {exc}")
            return {"load_run_id": run_id, "dispatched": False, "status": summary["status"]}

        outcome = _guarded(task, plan, fail)
        if not outcome.get("dispatched"):
            return outcome
        file_ids = outcome["file_ids"]
        log.info("run dispatched", files=len(file_ids))
    # Outside every try: replace() ends this task by raising Ignore; the chord takes over its id.
    return task.replace(run_signature(run_id, file_ids))  # type: ignore[no-any-return]


@app.task(bind=True, base=PipelineTask, name="indici.start_run")
def start_run(self: PipelineTask, run_id: int, selection: dict[str, Any]) -> dict[str, Any]:
    """Discover and register the run's files, then become the run's chord."""
    try:
        parsed = orchestration.selection_from_json(selection)
    except (TypeError, ValueError) as exc:  # a malformed message: end the run instead of leaving it open
        with bound(load_run_id=run_id), connect(_settings()) as conn:
            summary = lifecycle.fail_run(conn, run_id, f"bad selection: {exc}")
        return {"load_run_id": run_id, "dispatched": False, "status": summary["status"]}
    return _plan_and_dispatch(self, run_id, parsed)


@app.task(bind=True, base=PipelineTask, name="indici.nightly_run")
def nightly_run(self: PipelineTask) -> dict[str, Any]:
    """What beat enqueues: the night's run. Its row is keyed 'nightly:<NZ date>' (unique in
    etl.load_runs), so a redelivered message, or a second beat's message, continues the same run
    instead of starting another: exactly one nightly run per date."""
    selection = Selection(kind="nightly")
    settings = _settings()
    with connect(settings) as conn:
        run_id = lifecycle.open_run(conn, selection, settings, driver="celery",
                                    request_key=f"nightly:{nz_today().isoformat()}").run_id
    return _plan_and_dispatch(self, run_id, selection)


# -- one file ------------------------------------------------------------------------------------------
def _file_step(task: PipelineTask, run_id: int, file_id: int, step: Step) -> dict[str, Any]:
    settings = _settings()
    with bound(load_run_id=run_id, file_id=file_id), connect(settings) as conn:
        outcome = lifecycle.run_file_step(conn, make_client(settings), file_id, step, settings)
    if outcome.retry and not task.final_attempt():
        log.warning("transient error; the task will be retried", stage=step.value, retries=task.request.retries)
        task.retry_later()
    return outcome.as_task_result()


@app.task(bind=True, base=PipelineTask, name="indici.land_file")
def land_file(self: PipelineTask, run_id: int, file_id: int) -> dict[str, Any]:
    """S3 object version -> raw (once: the ledger's lock and state decide)."""
    return _file_step(self, run_id, file_id, Step.LAND)


@app.task(bind=True, base=PipelineTask, name="indici.stage_file")
def stage_file(self: PipelineTask, run_id: int, file_id: int) -> dict[str, Any]:
    """raw -> stg + rejects for a landed file; does nothing for a file that did not land."""
    return _file_step(self, run_id, file_id, Step.STAGE)


# -- the chord body ------------------------------------------------------------------------------------
def _merge_part(task: PipelineTask, run_id: int, part: str) -> dict[str, Any]:
    settings = _settings()
    with bound(load_run_id=run_id), connect(settings) as conn:
        summary = lifecycle.merge(conn, run_id, settings, part=part, raise_transient=not task.final_attempt())
    if summary is None:
        return {"load_run_id": run_id, "part": part, "status": "failed"}
    return {"load_run_id": run_id, "part": part, "status": "merged", "files_merged": summary["files_merged"],
            "inferred_members": summary["inferred_members"], "nhi_invalid": summary["nhi_invalid"],
            "seconds": summary["seconds"]}


@app.task(bind=True, base=PipelineTask, name="indici.merge_run")
def merge_run(self: PipelineTask, run_id: int) -> dict[str, Any]:
    """stg -> core for the run's staged files in one transaction: dimensions, then facts (kept for
    messages already queued by an earlier version; new runs merge in parts)."""
    return _merge_part(self, run_id, lifecycle.ALL_PARTS)


@app.task(bind=True, base=PipelineTask, name="indici.merge_dimensions")
def merge_dimensions(self: PipelineTask, run_id: int) -> dict[str, Any]:
    """stg -> core for the run's staged dimension files, then the facts: this task becomes a group of
    `merge_facts`, one per fact extract with staged files (none: the chain goes straight on)."""
    result = _merge_part(self, run_id, lifecycle.DIMENSIONS)
    if result["status"] != "merged":  # recorded on the run; the facts wait for the next run's merge
        return result
    with connect(_settings()) as conn:
        extracts = lifecycle.staged_fact_extracts(conn, run_id)
    if not extracts:
        return result
    log.info("fact merges dispatched", load_run_id=run_id, extracts=extracts)
    # Outside every try: replace() ends this task by raising Ignore; the group takes over its id.
    return self.replace(group(merge_facts.si(run_id, extract) for extract in extracts))  # type: ignore[no-any-return]


@app.task(bind=True, base=PipelineTask, name="indici.merge_facts")
def merge_facts(self: PipelineTask, run_id: int, extract: str) -> dict[str, Any]:
    """stg -> core for the run's staged files of one fact extract (its own lock: parallel with the
    other fact extracts' merges)."""
    return _merge_part(self, run_id, extract)


@app.task(bind=True, base=PipelineTask, name="indici.finalise_run")
def finalise_run(self: PipelineTask, run_id: int) -> dict[str, Any]:
    """The run's status from its files (and any recorded run-wide error), summary, etl.health."""
    with bound(load_run_id=run_id), connect(_settings()) as conn:
        summary = lifecycle.close_run(conn, run_id)
    return {"load_run_id": run_id, "status": summary["status"], "files": summary["files"]}


@app.task(bind=True, base=PipelineTask, name="indici.fail_run")
def fail_run(self: PipelineTask, run_id: int) -> dict[str, Any]:
    """Errback of the chord body: a task raised after its retries, so the body did not run."""
    with bound(load_run_id=run_id), connect(_settings()) as conn:
        summary = lifecycle.fail_run(conn, run_id, "a task of the run failed after its retries; see the worker log")
    return {"load_run_id": run_id, "status": summary["status"]}


# -- the reconciler ------------------------------------------------------------------------------------
@app.task(bind=True, base=PipelineTask, name="indici.reconcile")
def reconcile(self: PipelineTask) -> dict[str, Any]:
    """Beat, every few minutes (scheduler/beat.py): repair runs whose driver is gone (lifecycle.reconcile)
    by sending what they miss: their unfinished files' chains (then merge and close), or just the merge
    and close, or their planning again."""
    settings = _settings()
    with connect(settings) as conn:
        repairs = lifecycle.reconcile(conn, settings)
    for repair in repairs:
        if repair.action == "plan":
            start_run.apply_async((repair.run_id, repair.selection or {"kind": "nightly"}))
        elif repair.action == "files":
            chord(group(chain(land_file.si(repair.run_id, f), stage_file.si(repair.run_id, f))
                        for f in repair.file_ids), close_signature(repair.run_id)).apply_async()
        else:
            close_signature(repair.run_id).apply_async()
    return {"repairs": [{"load_run_id": r.run_id, "action": r.action, "files": len(r.file_ids)} for r in repairs]}
