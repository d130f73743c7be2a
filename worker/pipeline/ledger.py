r"""The file ledger (etl.load_run_files), runs (etl.load_runs) and the locks that make work happen once.

States of a file version:  pending -> landed -> staged -> merged
                                   \-> duplicate   (same bytes already loaded under another version)
                           any     -> failed       (error and error_detail say why; retryable or not)
Unique constraints on (bucket, key, version) and (version, hash) plus transaction-scoped advisory
locks, not Celery, guarantee that a file version is landed once. Reprocessing is an explicit,
audited request (etl.reprocess_requests), never a side effect of a retry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from contracts import naming
from contracts.registry import get as get_spec
from worker.pipeline.discovery import DiscoveredFile
from worker.pipeline.nztime import nz_local_to_utc


class LockSpace(IntEnum):
    """First key of the two-key advisory locks; the second is the file id (or 0 for a run-wide step)."""

    LAND = 1
    STAGE = 2
    MERGE = 3


DONE_STATES = ("merged", "duplicate", "skipped")


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
    error_detail: dict | None
    rows_read: int | None
    rows_raw: int | None
    rows_staged: int | None
    rows_rejected: int | None
    rows_superseded: int | None
    encoding: str | None

    @property
    def retryable(self) -> bool:
        return self.status == "failed" and bool((self.error_detail or {}).get("retryable"))


_FILE_COLUMNS = sql.SQL(", ").join(sql.Identifier(f) for f in FileRecord.__dataclass_fields__)


def lock(conn: psycopg.Connection, space: LockSpace, object_id: int) -> None:
    """Wait for the transaction-scoped advisory lock (space, id); released at commit or rollback."""
    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (int(space), object_id))


def start_run(conn: psycopg.Connection, kind: str, params: dict[str, Any]) -> int:
    row = conn.execute(
        "INSERT INTO etl.load_runs (kind, params) VALUES (%s, %s) RETURNING load_run_id",
        (kind, json.dumps(params, default=str)),
    ).fetchone()
    conn.commit()
    return row[0]


def record_unparseable(conn: psycopg.Connection, run_id: int, bucket: str, key: str, version_id: str, reason: str) -> None:
    conn.execute(
        "INSERT INTO etl.skipped_keys (load_run_id, s3_bucket, s3_key, s3_version_id, reason) "
        "VALUES (%s, %s, %s, %s, %s)",
        (run_id, bucket, key, version_id, reason),
    )


def register(conn: psycopg.Connection, run_id: int, found: DiscoveredFile) -> FileRecord:
    """Record a discovered file version (idempotent). A version not finished yet is taken over by this
    run; a finished one is returned as it is, so the caller skips it."""
    v, n = found.version, found.name
    conn.execute(
        """
        INSERT INTO etl.load_run_files
            (load_run_id, s3_bucket, s3_key, s3_version_id, s3_etag, s3_size, s3_last_modified,
             extract, extract_type, per_org_id, practice_id, date_from, date_to, date_extracted)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (s3_bucket, s3_key, s3_version_id) DO UPDATE
            SET load_run_id = CASE
                    WHEN etl.load_run_files.status IN ('pending', 'landed')
                      OR (etl.load_run_files.status = 'failed'
                          AND coalesce((etl.load_run_files.error_detail ->> 'retryable')::boolean, false))
                    THEN EXCLUDED.load_run_id
                    ELSE etl.load_run_files.load_run_id END,
                updated_at = now()
        """,
        (
            run_id, v.bucket, v.key, v.version_id, v.etag, v.size, v.last_modified,
            found.spec.extract, n.extract_token, n.per_org_id, n.practice_id,
            nz_local_to_utc(n.date_from), nz_local_to_utc(n.date_to), nz_local_to_utc(n.date_extracted),
        ),
    )
    record = get(conn, bucket=v.bucket, key=v.key, version_id=v.version_id)
    conn.commit()
    return record


def get(conn: psycopg.Connection, file_id: int | None = None, *, bucket: str | None = None,
        key: str | None = None, version_id: str | None = None, for_update: bool = False) -> FileRecord:
    if file_id is not None:
        where = sql.SQL("file_id = %s")
        params: tuple = (file_id,)
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
    """Files an earlier run left half-done (pending, landed, or failed with a retryable error)."""
    query = sql.SQL(
        "SELECT {} FROM etl.load_run_files WHERE status IN ('pending', 'landed') "
        "OR (status = 'failed' AND coalesce((error_detail ->> 'retryable')::boolean, false)) ORDER BY file_id"
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
    conn.commit()
    return {(extract, org, practice): newest for extract, org, practice, newest in rows}


def adopt(conn: psycopg.Connection, file_id: int, run_id: int) -> None:
    """Make an unfinished file part of this run (it will be retried here)."""
    conn.execute(
        "UPDATE etl.load_run_files SET load_run_id = %s, updated_at = now() WHERE file_id = %s "
        "AND status NOT IN ('merged', 'duplicate', 'skipped')",
        (run_id, file_id),
    )
    conn.commit()


def mark_failed(conn: psycopg.Connection, file_id: int, error: str, detail: dict[str, Any], retryable: bool) -> None:
    """Record a failure in its own transaction (the work's transaction has been rolled back)."""
    conn.execute(
        "UPDATE etl.load_run_files SET status = 'failed', error = %s, error_detail = %s, "
        "attempts = attempts + 1, updated_at = now() WHERE file_id = %s",
        (error, json.dumps({**detail, "retryable": retryable}, default=str), file_id),
    )
    conn.commit()


def request_reprocess(conn: psycopg.Connection, file_id: int, reason: str, requested_by: str) -> None:
    """Explicit, audited reprocessing: the file's raw, stg and reject rows are removed and it goes back
    to pending, under the landing lock so no worker is half-way through it."""
    if not reason.strip():
        raise ValueError("a reprocess needs a reason")
    with conn.transaction():
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
            "merged_at = NULL, updated_at = now() WHERE file_id = %s",
            (file_id,),
        )
    conn.commit()
