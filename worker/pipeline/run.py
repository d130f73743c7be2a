"""The `--inline` driver: a whole run in this process, as a thin loop over worker/pipeline/lifecycle.py.

open -> plan -> each file (land, stage) -> merge -> close. Every state write, commit and failure rule is
the lifecycle's; the Celery tasks (worker/tasks.py) drive the same functions.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import psycopg

from worker.log import bound, get_logger
from worker.pipeline import ledger, lifecycle
from worker.pipeline.lifecycle import RunPlan, Selection
from worker.settings import Settings

__all__ = ["Selection", "RunPlan", "plan_run", "process_file", "run_inline"]

log = get_logger(__name__)

Progress = Callable[[int, int, ledger.FileRecord], None]

# A transient failure (S3 reset or throttled, Postgres restarting) is retried in this process as the
# Celery tasks retry it: up to 4 more attempts, waiting a random time up to 1, 2, 4, 8 s.
TRANSIENT_RETRIES = 4
RETRY_BACKOFF = 1.0


def plan_run(conn: psycopg.Connection, s3_client: Any, settings: Settings, selection: Selection,
             run_id: int | None = None) -> RunPlan:
    """Open a run (unless `run_id` names one) and plan it; for callers that drive the steps themselves
    (bench, tests)."""
    if run_id is None:
        run_id = lifecycle.open_run(conn, selection, settings, driver="inline").run_id
    plan = lifecycle.plan_run(conn, s3_client, settings, selection, run_id)
    return plan if plan is not None else RunPlan(run_id)


def process_file(conn: psycopg.Connection, s3_client: Any, file_id: int, settings: Settings) -> str:
    """Land then stage one file (lifecycle.process_file); returns its status. Safe to repeat."""
    return lifecycle.process_file(conn, s3_client, file_id, settings).status.value


def run_inline(conn: psycopg.Connection, s3_client: Any, settings: Settings, selection: Selection,
               progress: Progress | None = None) -> dict[str, Any]:
    """The whole run in this process. A run of the same selection already going on elsewhere is
    joined: this waits for it and returns its outcome."""
    from worker.orchestration import RunTimeout, wait_for_run

    opened = lifecycle.open_run(conn, selection, settings, driver="inline")
    while opened.joined:  # wait for it; if its driver dies meanwhile, open_run fails it and opens a new run
        log.info("joining the run already going on", load_run_id=opened.run_id)
        try:
            return wait_for_run(settings, opened.run_id, timeout=settings.run_lease_seconds, poll=1.0)
        except RunTimeout:
            opened = lifecycle.open_run(conn, selection, settings, driver="inline")
    run_id = opened.run_id
    with bound(load_run_id=run_id):
        try:
            plan = lifecycle.plan_run(conn, s3_client, settings, selection, run_id)
        except Exception as exc:  # S3 unreachable, no bucket, no credentials: close the run, then report
            try:
                lifecycle.fail_run(conn, run_id, f"planning: {type(exc).__name__}: {exc}")
            except Exception as closing:  # Postgres itself is gone: the reconciler closes the run later
                log.error("could not close the run after its planning failed", error=type(closing).__name__)
            raise
        file_ids = plan.file_ids if plan is not None else []
        for index, file_id in enumerate(file_ids, 1):
            for attempt in range(TRANSIENT_RETRIES + 1):  # one file's failure never stops the others
                outcome = lifecycle.process_file(conn, s3_client, file_id, settings)
                if not outcome.retry or attempt == TRANSIENT_RETRIES:
                    break
                log.warning("transient error; the file is tried again", file_id=file_id, attempt=attempt + 1)
                time.sleep(random.uniform(0, RETRY_BACKOFF * 2 ** attempt))
            if progress is not None:
                progress(index, len(file_ids), ledger.get(conn, file_id))
        try:
            lifecycle.merge(conn, run_id, settings)
        finally:  # a configuration error still closes the run (as failed) before it propagates
            summary = lifecycle.close_run(conn, run_id)
    return summary
