"""Restage: replay raw rows through the current contract after a contract fix (a rule relaxed, a domain
value mapped, a threshold raised), so rows once rejected reach stg and core.

Raw is lossless, so nothing is fetched from S3 again: for each chosen file (status staged, merged, or
failed after landing, i.e. with its rows in raw) under the landing, staging and merge locks, in one
transaction with its audit row in etl.operator_actions:

    staged | merged | failed  ──▶  landed   (its stg rows, rejects and per-file checks removed)

then, inside a run of kind 'restage' recorded in etl.load_runs, the lifecycle's ordinary staging step
(lifecycle.run_file_step, STAGE) stages each file again and its ordinary merge (lifecycle.merge) brings
the result into core; lifecycle.close_run closes the run with its summary, anomalies and notification.
The state changes (lifecycle.return_to_landed, ledger.mark_restaging) are the lifecycle's, as for any run.

Why no duplicates: stg and rejects of a file are replaced, not added to (the delete and the status
change commit together); core merges are keyed (SCD2 history recomputed from stg per key, facts
newest-version-wins on the natural key with lineage (file, row number)), so a row merged before is
found again, not inserted twice. What restage does not do: remove from core a row that the current
contract now rejects (core keeps what it had); a file that failed before landing has no raw rows and
needs `indici-ingest reprocess FILE_ID` instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from contracts import naming
from contracts.registry import get as get_spec
from worker.log import bound, get_logger
from worker.pipeline import ledger, lifecycle
from worker.pipeline.operator import record_action
from worker.settings import Settings

log = get_logger(__name__)

RESTAGEABLE = ("staged", "merged", "failed")
RUN_KIND = "restage"


class RestageError(ValueError):
    """Nothing to restage, or a file that cannot be (the message says what to do instead)."""


@dataclass
class RestagePlan:
    extract: str
    run: int | None
    file_ids: list[int] = field(default_factory=list)
    previous: list[dict[str, Any]] = field(default_factory=list)  # per file: status, run, rows
    not_landed: list[int] = field(default_factory=list)  # failed before landing: reprocess instead


def plan(conn: psycopg.Connection, extract: str, run_id: int | None = None) -> RestagePlan:
    """The files of `extract` (of run `run_id`, when given) whose raw rows can be staged again."""
    spec = get_spec(extract)
    rows = conn.execute(
        sql.SQL(
            "SELECT f.file_id, f.status, f.load_run_id, f.rows_raw, f.rows_staged, f.rows_rejected, "
            "EXISTS (SELECT 1 FROM {raw} r WHERE r.load_file_id = f.file_id) "
            "FROM etl.load_run_files f WHERE f.extract = %(extract)s AND f.status = ANY(%(statuses)s) "
            "AND (%(run)s::bigint IS NULL OR f.load_run_id = %(run)s) ORDER BY f.file_id"
        ).format(raw=sql.Identifier(naming.RAW, naming.raw_table(spec))),
        {"extract": spec.extract, "statuses": list(RESTAGEABLE), "run": run_id},
    ).fetchall()
    conn.commit()
    out = RestagePlan(spec.extract, run_id)
    for file_id, status, run, rows_raw, staged, rejected, has_raw in rows:
        if status == "failed" and (not has_raw or rows_raw is None):
            out.not_landed.append(file_id)
            continue
        out.file_ids.append(file_id)
        out.previous.append({"file_id": file_id, "status": status, "load_run_id": run,
                             "rows_staged": staged, "rows_rejected": rejected})
    return out


def _clear_staging(conn: psycopg.Connection, record: ledger.FileRecord) -> None:
    """What staging wrote for the file: its stg rows, rejects and checks (restage writes them anew)."""
    if record.status not in RESTAGEABLE:
        raise RestageError(f"file {record.file_id} became {record.status} meanwhile; run restage again")
    spec = get_spec(record.extract)
    for schema, table in ((naming.STG, naming.stg_table(spec)), (naming.ETL, naming.rejects_table(spec))):
        conn.execute(sql.SQL("DELETE FROM {} WHERE load_file_id = %s").format(sql.Identifier(schema, table)),
                     (record.file_id,))
    conn.execute("DELETE FROM etl.dq_results WHERE file_id = %s", (record.file_id,))


def _replay(conn: psycopg.Connection, run_id: int, file_ids: list[int], settings: Settings) -> dict[str, Any]:
    """Stage the files again, merge, close the run: each through the lifecycle, as a run's steps are."""
    try:
        for file_id in file_ids:  # one file's failure never stops the others (run_file_step's rule)
            lifecycle.run_file_step(conn, None, file_id, lifecycle.Step.STAGE, settings)
        lifecycle.merge(conn, run_id, settings)
    finally:  # the run is closed whatever happened (a configuration error still propagates)
        summary = lifecycle.close_run(conn, run_id)
    return summary


def restage(conn: psycopg.Connection, settings: Settings, extract: str, run_id: int | None = None,
            actor: str = "cli") -> dict[str, Any]:
    """Replay the raw rows of an extract's files (of one run, when given) through the current contract.
    Returns the restage run's summary, with `restaged` (per file: before and after)."""
    chosen = plan(conn, extract, run_id)
    if not chosen.file_ids:
        where = f" of run {run_id}" if run_id is not None else ""
        hint = (f"; files {', '.join(map(str, chosen.not_landed))} failed before landing: "
                "use `indici-ingest reprocess FILE_ID --reason ...`" if chosen.not_landed else "")
        raise RestageError(f"no {chosen.extract} file{where} has rows in raw to restage{hint}")
    arguments = {"extract": chosen.extract, "run": run_id}
    new_run = lifecycle.open_operator_run(conn, RUN_KIND, {**arguments, "requested_by": actor}, settings)
    with bound(load_run_id=new_run):
        try:
            action = lifecycle.return_to_landed(
                conn, new_run, chosen.file_ids, _clear_staging,
                lambda c: record_action(c, actor, RUN_KIND, {**arguments, "load_run_id": new_run,
                                                             "files": chosen.file_ids}, chosen.previous))
        except Exception as exc:
            lifecycle.fail_run(conn, new_run, f"restage: {type(exc).__name__}: {exc}")
            raise
        log.info("restage started", extract=chosen.extract, files=len(chosen.file_ids), operator_action_id=action)
        summary = _replay(conn, new_run, chosen.file_ids, settings)
    after = {f.file_id: f for f in ledger.files_of_run(conn, new_run)}
    conn.commit()
    summary["restaged"] = [
        {**before, "now": {"status": after[before["file_id"]].status,
                           "rows_staged": after[before["file_id"]].rows_staged,
                           "rows_rejected": after[before["file_id"]].rows_rejected}}
        for before in chosen.previous if before["file_id"] in after
    ]
    summary["operator_action_id"] = action
    summary["not_restaged_failed_before_landing"] = chosen.not_landed
    return summary
