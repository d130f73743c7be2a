"""A run: discover, register, land and stage every selected file, then finalise and summarise.

Three plain steps that the CLI's --inline path calls in order and that Celery tasks will call from a
chord: `plan_run` (discovery + ledger), `process_file` (land -> stage, one file), `finalise_run`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Callable

import psycopg
from psycopg.types.json import Jsonb

from worker.log import bound, get_logger
from worker.pipeline import anomalies, discovery, ledger, notify, relaxed
from worker.pipeline.identity import ConfigurationError
from worker.pipeline.land import land_file
from worker.pipeline.merge import merge_run
from worker.pipeline.stage import stage_file
from worker.settings import Settings

log = get_logger(__name__)


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


@dataclass
class RunPlan:
    run_id: int
    file_ids: list[int] = field(default_factory=list)
    already_done: int = 0
    unparseable: int = 0


def plan_run(
    conn: psycopg.Connection, s3_client, settings: Settings, selection: Selection, run_id: int | None = None
) -> RunPlan:
    """Start a run (or take `run_id`, a run already created in etl.load_runs, e.g. by the CLI before it
    enqueued the Celery path), discover and register its files; pending work of earlier runs comes first."""
    if run_id is None:
        run_id = ledger.start_run(conn, selection.kind, selection.as_params())
    plan = RunPlan(run_id)
    with bound(load_run_id=run_id):
        prefix = settings.s3_prefix
        found = discovery.discover(s3_client, settings.s3_bucket, prefix, settings.known_per_org_ids)
        for version, reason in found.unparseable:
            ledger.record_unparseable(conn, run_id, version.bucket, version.key, version.version_id, reason)
            log.warning("key skipped: it does not parse", s3_key=version.key, reason=reason)
        conn.commit()
        plan.unparseable = len(found.unparseable)
        if selection.kind == "backfill":
            chosen = discovery.select_range(
                found.files, selection.date_from, selection.date_to, selection.extracts, selection.key_prefix
            )
        else:
            chosen = discovery.select_nightly(found.files, ledger.loaded_up_to(conn), selection.extracts)
        # Finish what earlier runs left half-done before starting new work.
        for record in ledger.unfinished(conn):
            ledger.adopt(conn, record.file_id, run_id)
            plan.file_ids.append(record.file_id)
        for f in chosen:
            record = ledger.register(conn, run_id, f)
            if record.load_run_id == run_id and record.file_id not in plan.file_ids:
                plan.file_ids.append(record.file_id)
            elif record.load_run_id != run_id:
                plan.already_done += 1
        log.info("run planned", files=len(plan.file_ids), already_done=plan.already_done,
                 unparseable=plan.unparseable, discovered=len(found.files))
    return plan


def process_file(conn: psycopg.Connection, s3_client, file_id: int, settings: Settings) -> str:
    """Land then stage one file; returns its final status. Safe to repeat."""
    record = ledger.get(conn, file_id)
    conn.commit()
    if record.status in ("pending",) or record.retryable:
        land_file(conn, s3_client, file_id, settings)
    record = ledger.get(conn, file_id)
    conn.commit()
    if record.status == "landed":
        stage_file(conn, file_id)
    status = ledger.get(conn, file_id).status
    conn.commit()
    return status


def finalise_run(conn: psycopg.Connection, run_id: int, started: float | None = None,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Work out the run's status from its files, store the summary (with `extra`, in the same write, so a
    reader never sees a final status without it) and update etl.health."""
    files = ledger.files_of_run(conn, run_id)
    by_status: dict[str, int] = {}
    for f in files:
        by_status[f.status] = by_status.get(f.status, 0) + 1
    failed = by_status.get("failed", 0) + by_status.get("pending", 0) + by_status.get("landed", 0)
    ok = len(files) - failed
    status = "succeeded" if failed == 0 else ("partial" if ok else "failed")
    run_error = conn.execute("SELECT error FROM etl.load_runs WHERE load_run_id = %s", (run_id,)).fetchone()[0]
    if run_error:  # the merge failed: nothing of this run reached core
        status = "failed"
    unparseable = conn.execute(
        "SELECT count(*) FROM etl.skipped_keys WHERE load_run_id = %s", (run_id,)
    ).fetchone()[0]
    summary = {
        "files": len(files),
        "by_status": by_status,
        "rows_read": sum(f.rows_read or 0 for f in files),
        "rows_staged": sum(f.rows_staged or 0 for f in files),
        "rows_rejected": sum(f.rows_rejected or 0 for f in files),
        "rows_superseded": sum(f.rows_superseded or 0 for f in files),
        "unparseable_keys": unparseable,
        "failures": [{"file_id": f.file_id, "s3_key": f.s3_key, "error": f.error} for f in files if f.status == "failed"],
        "error": run_error,
    }
    if started is not None:
        summary["seconds"] = round(time.monotonic() - started, 3)
    summary.update(extra or {})
    summary["anomalies"] = [a.as_dict() for a in anomalies.evaluate_run(conn, run_id)]  # ops hook (issue 9)
    if used := relaxed.uses(conn, run_id):  # ops hook (issue 9): relaxed thresholds, each use recorded
        summary["relaxed_thresholds"] = used
    conn.execute(
        "UPDATE etl.load_runs SET status = %s, summary = %s, finished_at = now() WHERE load_run_id = %s",
        (status, Jsonb(summary), run_id),
    )
    # Health: an extract whose files in this run all succeeded records this run as its last success.
    conn.execute(
        """
        INSERT INTO etl.health (extract, last_success_run_id, last_success_at, last_date_extracted, status)
        SELECT extract, %(run)s, now(), max(date_extracted), 'ok'
        FROM etl.load_run_files WHERE load_run_id = %(run)s
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
        SELECT extract, 'failing' FROM etl.load_run_files WHERE load_run_id = %(run)s
        GROUP BY extract HAVING NOT bool_and(status IN ('merged', 'duplicate'))
        ON CONFLICT (extract) DO UPDATE SET status = 'failing', updated_at = now()
        """,
        {"run": run_id},
    )
    conn.commit()
    notify.notify_run(conn, run_id)  # ops hook (issue 9): the run's summary to NOTIFY_URLS; never raises
    return {"load_run_id": run_id, "status": status, **summary}


def merge_staged(conn: psycopg.Connection, run_id: int, settings: Settings) -> dict[str, Any] | None:
    """Merge the run's staged files into core (dimensions, then facts). A failed merge rolls back, leaves
    the files staged for the next run to merge, and is recorded on the run (which then fails). A missing
    NHI_HMAC_KEY is a configuration error and propagates."""
    try:
        return merge_run(conn, run_id, settings)
    except Exception as exc:
        conn.rollback()
        log.error("merge failed", error=type(exc).__name__)
        conn.execute(
            "UPDATE etl.load_runs SET error = %s WHERE load_run_id = %s",
            (f"merge: {type(exc).__name__}: {exc}", run_id),
        )
        conn.commit()
        if isinstance(exc, ConfigurationError):
            raise
        return None


def run_inline(
    conn: psycopg.Connection,
    s3_client,
    settings: Settings,
    selection: Selection,
    progress: Callable[[int, int, ledger.FileRecord], None] | None = None,
) -> dict[str, Any]:
    """The whole run in this process: plan, then each file, then finalise."""
    started = time.monotonic()
    plan = plan_run(conn, s3_client, settings, selection)
    with bound(load_run_id=plan.run_id):
        for index, file_id in enumerate(plan.file_ids, 1):
            try:
                process_file(conn, s3_client, file_id, settings)
            except Exception as exc:  # one file's failure never stops the others
                conn.rollback()
                record = ledger.get(conn, file_id)
                if record.status not in ("failed",):
                    ledger.mark_failed(conn, file_id, f"{record.s3_key}: {type(exc).__name__}: {exc}",
                                       {"stage": "process"}, retryable=True)
                log.error("file processing failed", file_id=file_id, error=type(exc).__name__)
            if progress is not None:
                progress(index, len(plan.file_ids), ledger.get(conn, file_id))
                conn.commit()
        try:
            merge_summary = merge_staged(conn, plan.run_id, settings)
        finally:  # a configuration error still closes the run (as failed) before it propagates
            summary = finalise_run(conn, plan.run_id, started)
    summary["merge"] = merge_summary
    summary["already_done"] = plan.already_done
    return summary
