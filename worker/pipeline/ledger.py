r"""The file ledger (etl.load_run_files): the only module issuing the SQL that changes a file's state.

Called only from worker/pipeline/lifecycle.py, which owns the transitions (worker/pipeline/states.py)
and every commit: nothing here commits or rolls back. Each state change is an UPDATE whose WHERE names
the states it may come from, so a transition that is not allowed changes nothing and raises
InvalidTransition instead of overwriting a concurrent change.

Unique constraints on (bucket, key, version) and (version, hash) plus transaction-scoped advisory
locks, not Celery, guarantee that a file version is landed once. Reprocessing is an explicit,
audited request (etl.reprocess_requests), never a side effect of a retry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from contracts import naming
from contracts.registry import get as get_spec
from worker.pipeline.discovery import DiscoveredFile
from worker.pipeline.nztime import nz_local_to_utc
from worker.pipeline.states import (
    DONE_FILE_STATES,
    FILE_TRANSITIONS,
    FileStatus,
    InvalidTransition,
    LockSpace,
    check_file_transition,
)

__all__ = ["LockSpace", "FileRecord", "LockTimeout", "DONE_STATES"]

DONE_STATES = tuple(s.value for s in DONE_FILE_STATES)
# SQL: the run owning etl.load_run_files row `f` is still marked running (alive or not). Its staged
# files are adopted when it is not alive: the merge takes staged files of closed runs by itself, not
# those of a run still marked running.
_OWNER_RUNNING = (
    "EXISTS (SELECT 1 FROM etl.load_runs r WHERE r.load_run_id = {f}.load_run_id AND r.status = 'running')"
)
# SQL: the run owning etl.load_run_files row `f` is alive (running, and its lease or a file's holds).
_OWNER_ALIVE = (
    "EXISTS (SELECT 1 FROM etl.load_runs r WHERE r.load_run_id = {f}.load_run_id "
    "AND r.status = 'running' AND " + "{alive})"
)
# SQL: run `r` is alive: its lease holds, or one of its files is leased (a long step in progress).
RUN_ALIVE = (
    "(r.lease_expires_at > now() OR EXISTS (SELECT 1 FROM etl.load_run_files leased "
    "WHERE leased.load_run_id = r.load_run_id AND leased.lease_expires_at > now()))"
)
_OWNER_ALIVE = _OWNER_ALIVE.replace("{alive}", RUN_ALIVE)


class LockTimeout(psycopg.errors.LockNotAvailable):
    """An advisory lock was not granted in time; the message names the backend holding it."""


@dataclass
class FileRecord:
    file_id: int
    load_run_id: int
    s3_bucket: str
    s3_key: str
    s3_version_id: str
    extract: str
    extract_type: str
    per_org_id: int | None
    practice_id: int | None
    date_from: datetime
    date_to: datetime
    date_extracted: datetime
    status: str
    file_hash: str | None
    attempts: int
    error: str | None
    error_detail: dict[str, Any] | None
    rows_read: int | None
    rows_raw: int | None
    rows_staged: int | None
    rows_rejected: int | None
    rows_superseded: int | None
    encoding: str | None
    lease_expires_at: datetime | None = None

    @property
    def retryable(self) -> bool:
        return self.status == "failed" and bool((self.error_detail or {}).get("retryable"))


_FILE_COLUMNS = sql.SQL(", ").join(sql.Identifier(f) for f in FileRecord.__dataclass_fields__)


def set_application_name(conn: psycopg.Connection, name: str) -> None:
    """Name this backend in pg_stat_activity (what a waiting lock's message shows as the holder)."""
    conn.execute("SELECT set_config('application_name', %s, false)", (name[:63],))


def lock(conn: psycopg.Connection, space: LockSpace, object_id: int, timeout: float | None = None) -> None:
    """Take the transaction-scoped advisory lock (space, id), released at commit or rollback.

    With `timeout` (seconds) the wait is bounded: LockTimeout names the backend that holds the lock
    (its application_name says which run and file, see set_application_name) and since when."""
    if timeout is None:
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (int(space), object_id))
        return
    deadline = time.monotonic() + timeout
    pause = 0.05
    while True:
        row = conn.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", (int(space), object_id)).fetchone()
        if row is not None and row[0]:
            return
        if time.monotonic() >= deadline:
            raise LockTimeout(f"waited {timeout:g}s for the {space.name.lower()} lock of {object_id}: "
                              f"{lock_holder(conn, space, object_id)}")
        time.sleep(pause)
        pause = min(pause * 2, 1.0)


def lock_holder(conn: psycopg.Connection, space: LockSpace, object_id: int) -> str:
    """Who holds the advisory lock (space, id): backend pid, application name, since when."""
    row = conn.execute(
        "SELECT a.pid, a.application_name, a.state, a.xact_start FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
        "AND l.classid = %s AND l.objid = %s AND l.objsubid = 2 LIMIT 1",
        (int(space), object_id),
    ).fetchone()
    if row is None:
        return "held by a backend that has since released it"
    pid, name, state, since = row
    return f"held by backend {pid} ({name or 'no application name'}, {state}, in a transaction since {since})"


def record_unparseable(conn: psycopg.Connection, run_id: int, bucket: str, key: str, version_id: str,
                       reason: str) -> None:
    conn.execute(
        "INSERT INTO etl.skipped_keys (load_run_id, s3_bucket, s3_key, s3_version_id, reason) "
        "VALUES (%s, %s, %s, %s, %s)",
        (run_id, bucket, key, version_id, reason),
    )


def _register_values(run_id: int, found: DiscoveredFile, status: FileStatus) -> tuple[Any, ...]:
    v, n = found.version, found.name
    return (
        run_id, v.bucket, v.key, v.version_id, v.etag, v.size, v.last_modified,
        found.spec.extract, n.extract_token, n.per_org_id, n.practice_id,
        nz_local_to_utc(n.date_from), nz_local_to_utc(n.date_to), nz_local_to_utc(n.date_extracted),
        status.value,
    )


_INSERT_FILE = """
    INSERT INTO etl.load_run_files
        (load_run_id, s3_bucket, s3_key, s3_version_id, s3_etag, s3_size, s3_last_modified,
         extract, extract_type, per_org_id, practice_id, date_from, date_to, date_extracted, status)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""


def register(conn: psycopg.Connection, run_id: int, found: DiscoveredFile) -> FileRecord:
    """Record a discovered file version (idempotent). A version not finished yet whose run is no
    longer alive (or that failed retryably) is taken over by this run; otherwise the row is returned
    as it is (finished, or owned by a live run), so the caller leaves it."""
    v = found.version
    conn.execute(
        _INSERT_FILE + """
        ON CONFLICT (s3_bucket, s3_key, s3_version_id) DO UPDATE
            SET load_run_id = CASE
                    WHEN (etl.load_run_files.status IN ('pending', 'landed')
                          OR (etl.load_run_files.status = 'staged'
                              AND """ + _OWNER_RUNNING.format(f="etl.load_run_files") + """)
                          OR (etl.load_run_files.status = 'failed'
                              AND coalesce((etl.load_run_files.error_detail ->> 'retryable')::boolean, false)))
                      AND NOT """ + _OWNER_ALIVE.format(f="etl.load_run_files") + """
                    THEN EXCLUDED.load_run_id
                    ELSE etl.load_run_files.load_run_id END,
                updated_at = now()
        """,
        _register_values(run_id, found, FileStatus.PENDING),
    )
    return get(conn, bucket=v.bucket, key=v.key, version_id=v.version_id)


def register_superseded(conn: psycopg.Connection, run_id: int, found: DiscoveredFile) -> FileRecord:
    """Record an older version of a key whose newest version this run takes: `superseded`, never
    loaded. A version already loaded keeps its state; one still waiting (pending, or failed retryably)
    under a run that is not alive becomes superseded."""
    v = found.version
    conn.execute(
        _INSERT_FILE + """
        ON CONFLICT (s3_bucket, s3_key, s3_version_id) DO UPDATE
            SET status = CASE
                    WHEN (etl.load_run_files.status = 'pending'
                          OR (etl.load_run_files.status = 'failed'
                              AND coalesce((etl.load_run_files.error_detail ->> 'retryable')::boolean, false)))
                      AND NOT """ + _OWNER_ALIVE.format(f="etl.load_run_files") + """
                    THEN 'superseded' ELSE etl.load_run_files.status END,
                updated_at = now()
        """,
        _register_values(run_id, found, FileStatus.SUPERSEDED),
    )
    return get(conn, bucket=v.bucket, key=v.key, version_id=v.version_id)


def get(conn: psycopg.Connection, file_id: int | None = None, *, bucket: str | None = None,
        key: str | None = None, version_id: str | None = None, for_update: bool = False) -> FileRecord:
    if file_id is not None:
        where = sql.SQL("file_id = %s")
        params: tuple[Any, ...] = (file_id,)
    else:
        where = sql.SQL("s3_bucket = %s AND s3_key = %s AND s3_version_id = %s")
        params = (bucket, key, version_id)
    query = sql.SQL("SELECT {} FROM etl.load_run_files WHERE {}{}").format(
        _FILE_COLUMNS, where, sql.SQL(" FOR UPDATE") if for_update else sql.SQL("")
    )
    with conn.cursor(row_factory=class_row(FileRecord)) as cur:
        record = cur.execute(query, params).fetchone()
    if record is None:
        raise LookupError(f"no ledger row for file {file_id or (bucket, key, version_id)}")
    return record


def files_of_run(conn: psycopg.Connection, run_id: int) -> list[FileRecord]:
    query = sql.SQL("SELECT {} FROM etl.load_run_files WHERE load_run_id = %s ORDER BY file_id").format(
        _FILE_COLUMNS
    )
    with conn.cursor(row_factory=class_row(FileRecord)) as cur:
        return cur.execute(query, (run_id,)).fetchall()


def unfinished(conn: psycopg.Connection) -> list[FileRecord]:
    """Files that runs no longer alive left half-done (pending, landed, or staged in a run still marked
    running: its merge never ran), or that failed with a retryable error."""
    query = sql.SQL(
        "SELECT {} FROM etl.load_run_files f WHERE (status IN ('pending', 'landed') "
        "OR (status = 'staged' AND " + _OWNER_RUNNING.format(f="f") + ") "
        "OR (status = 'failed' AND coalesce((error_detail ->> 'retryable')::boolean, false))) "
        "AND NOT " + _OWNER_ALIVE.format(f="f") + " ORDER BY file_id"
    ).format(_FILE_COLUMNS)
    with conn.cursor(row_factory=class_row(FileRecord)) as cur:
        return cur.execute(query).fetchall()


def loaded_up_to(conn: psycopg.Connection) -> dict[tuple[str, int | None, int | None], datetime]:
    """Per (extract, per_org_id, practice_id): the newest DateExtracted (NZ local, naive, as in file
    names) of a file that was loaded (landed, staged, merged, or a duplicate of a loaded one)."""
    rows = conn.execute(
        "SELECT extract, per_org_id, practice_id, max(date_extracted AT TIME ZONE 'Pacific/Auckland') "
        "FROM etl.load_run_files WHERE status IN ('landed', 'staged', 'merged', 'duplicate') "
        "GROUP BY 1, 2, 3"
    ).fetchall()
    return {(extract, org, practice): newest for extract, org, practice, newest in rows}


def adopt(conn: psycopg.Connection, file_id: int, run_id: int) -> bool:
    """Make an unfinished file of a run no longer alive part of this run; False if it is not (any
    more) adoptable."""
    row = conn.execute(
        "UPDATE etl.load_run_files f SET load_run_id = %s, updated_at = now() WHERE file_id = %s "
        "AND (status IN ('pending', 'landed') OR (status = 'staged' AND " + _OWNER_RUNNING.format(f="f") + ") "
        "OR (status = 'failed' "
        "AND coalesce((error_detail ->> 'retryable')::boolean, false))) AND NOT "
        + _OWNER_ALIVE.format(f="f") + " RETURNING file_id",
        (run_id, file_id),
    ).fetchone()
    return row is not None


def take_lease(conn: psycopg.Connection, file_id: int, seconds: float, holder: str) -> None:
    """A worker takes the file: until the lease expires nobody else re-enqueues it (the reconciler
    re-enqueues a pending or landed file whose lease has expired: its worker was lost)."""
    conn.execute(
        "UPDATE etl.load_run_files SET lease_expires_at = now() + make_interval(secs => %s), "
        "leased_by = %s WHERE file_id = %s",
        (seconds, holder[:200], file_id),
    )


def _transition(conn: psycopg.Connection, file_id: int, new: FileStatus, assignments: str,
                params: dict[str, Any], from_states: Collection[FileStatus] | None = None) -> None:
    allowed = [s.value for s in (FILE_TRANSITIONS[new] if from_states is None else from_states)]
    row = conn.execute(
        "UPDATE etl.load_run_files SET status = %(new)s, " + assignments + ", lease_expires_at = NULL, "
        "updated_at = now() WHERE file_id = %(file_id)s AND status = ANY(%(allowed)s) RETURNING file_id",
        {**params, "new": new.value, "file_id": file_id, "allowed": allowed},
    ).fetchone()
    if row is None:
        current = get(conn, file_id).status
        check_file_transition(current, new)  # raises
        raise InvalidTransition(f"file {file_id}: {current} -> {new.value} was not applied")


def mark_landed(conn: psycopg.Connection, file_id: int, *, file_hash: str, encoding: str, rows_read: int,
                rows_raw: int, landed_at: datetime) -> None:
    _transition(conn, file_id, FileStatus.LANDED,
                "file_hash = %(hash)s, encoding = %(encoding)s, rows_read = %(read)s, rows_raw = %(raw)s, "
                "landed_at = %(at)s, attempts = attempts + 1, error = NULL, error_detail = NULL",
                {"hash": file_hash, "encoding": encoding, "read": rows_read, "raw": rows_raw, "at": landed_at},
                from_states=(FileStatus.PENDING, FileStatus.FAILED))  # staged/merged -> landed: restage only


def mark_duplicate(conn: psycopg.Connection, file_id: int, *, duplicate_of: int, file_hash: str) -> None:
    _transition(conn, file_id, FileStatus.DUPLICATE,
                "duplicate_of = %(of)s, file_hash = %(hash)s, attempts = attempts + 1, error = NULL, "
                "error_detail = NULL", {"of": duplicate_of, "hash": file_hash})


def mark_staged(conn: psycopg.Connection, file_id: int, *, staged: int, rejected: int, superseded: int,
                error: str | None) -> None:
    """Staged, or failed by its data-quality thresholds (`error`). `rejected` counts every row of the
    file in its rejects table (superseded duplicates included), so rows_read = staged + rejected."""
    status = FileStatus.FAILED if error else FileStatus.STAGED
    _transition(conn, file_id, status,
                "rows_staged = %(staged)s, rows_rejected = %(rejected)s, rows_superseded = %(superseded)s, "
                "staged_at = now(), error = %(error)s, error_detail = %(detail)s",
                {"staged": staged, "rejected": rejected, "superseded": superseded, "error": error,
                 "detail": Jsonb({"stage": "dq", "retryable": False}) if error else None})


# Restage (worker/pipeline/restage.py) replays a file's raw rows: these states go back to `landed`.
RESTAGE_FROM = (FileStatus.STAGED, FileStatus.MERGED, FileStatus.FAILED)


def mark_restaging(conn: psycopg.Connection, file_id: int, run_id: int) -> None:
    """A staged, merged or failed file back to `landed`, in the restage run `run_id`, its staging counts
    cleared (its stg rows, rejects and checks are removed by the caller in the same transaction)."""
    row = conn.execute(
        "UPDATE etl.load_run_files SET status = %(new)s, load_run_id = %(run)s, error = NULL, error_detail = NULL, "
        "rows_staged = NULL, rows_rejected = NULL, rows_superseded = NULL, staged_at = NULL, merged_at = NULL, "
        "lease_expires_at = NULL, updated_at = now() "
        "WHERE file_id = %(file_id)s AND status = ANY(%(allowed)s) RETURNING file_id",
        {"new": FileStatus.LANDED.value, "run": run_id, "file_id": file_id,
         "allowed": [s.value for s in RESTAGE_FROM]},
    ).fetchone()
    if row is None:
        raise InvalidTransition(f"file {file_id} is {get(conn, file_id).status}: only a staged, merged or failed "
                                "file is restaged")


def mark_failed(conn: psycopg.Connection, file_id: int, error: str, detail: dict[str, Any], retryable: bool) -> None:
    """Record a failure (the caller rolled the work's transaction back first)."""
    _transition(conn, file_id, FileStatus.FAILED,
                "error = %(error)s, error_detail = %(detail)s, attempts = attempts + 1",
                {"error": error, "detail": json.dumps({**detail, "retryable": retryable}, default=str)})


def mark_merged(conn: psycopg.Connection, file_ids: Collection[int]) -> None:
    """The merge's files, in the merge's own transaction."""
    if not file_ids:
        return
    ids = sorted(set(file_ids))
    changed = conn.execute(
        "UPDATE etl.load_run_files SET status = 'merged', merged_at = now(), lease_expires_at = NULL, "
        "updated_at = now() WHERE file_id = ANY(%s) AND status = 'staged'",
        (ids,),
    ).rowcount
    if changed != len(ids):
        raise InvalidTransition(f"{len(ids) - changed} of {len(ids)} merged files were not staged")


def request_reprocess(conn: psycopg.Connection, file_id: int, reason: str, requested_by: str) -> None:
    """Explicit, audited reprocessing: the file's raw, stg and reject rows are removed and it goes back
    to pending, under the landing and staging locks so no worker is half-way through it. The caller
    (lifecycle.request_reprocess) commits."""
    if not reason.strip():
        raise ValueError("a reprocess needs a reason")
    lock(conn, LockSpace.LAND, file_id)
    lock(conn, LockSpace.STAGE, file_id)
    record = get(conn, file_id, for_update=True)
    spec = get_spec(record.extract)
    conn.execute(
        "INSERT INTO etl.reprocess_requests (file_id, requested_by, reason, previous_status) "
        "VALUES (%s, %s, %s, %s)",
        (file_id, requested_by, reason, record.status),
    )
    for schema, table in (
        (naming.RAW, naming.raw_table(spec)),
        (naming.STG, naming.stg_table(spec)),
        (naming.ETL, naming.rejects_table(spec)),
    ):
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE load_file_id = %s").format(sql.Identifier(schema, table)),
            (file_id,),
        )
    conn.execute("DELETE FROM etl.dq_results WHERE file_id = %s", (file_id,))
    conn.execute(
        "UPDATE etl.load_run_files SET status = 'pending', error = NULL, error_detail = NULL, "
        "file_hash = NULL, duplicate_of = NULL, rows_read = NULL, rows_raw = NULL, rows_staged = NULL, "
        "rows_rejected = NULL, rows_superseded = NULL, landed_at = NULL, staged_at = NULL, "
        "merged_at = NULL, lease_expires_at = NULL, updated_at = now() WHERE file_id = %s",
        (file_id,),
    )
