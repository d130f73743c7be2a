"""Raw landing: one file version from S3 into raw.<t>_raw, whole or not at all.

In one transaction per file: take the file's advisory lock, re-read its ledger row (another worker may
have landed it meanwhile), spool the object version to a temporary file while hashing it, refuse content
already loaded under another version (duplicate), then stream the bytes through the Indici reader into
COPY with every row's number and lineage (sent by a writer thread, so decoding overlaps the COPY). A
format error rolls the transaction back, so a bad file lands no rows, and is recorded as failed with the
row, the counts and the reason.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import psycopg
from psycopg import sql

from contracts import naming
from contracts.model import LINEAGE_COLUMNS, ExtractSpec
from contracts.registry import get as get_spec
from worker.io.copy_writer import BoundedQueuedWriter
from worker.io.indici_reader import IndiciFormatError, IndiciReader, escape_copy_text
from worker.io.s3 import spool_version
from worker.log import bound, get_logger
from worker.pipeline import ledger
from worker.pipeline.ledger import LockSpace
from worker.settings import Settings, get_settings

log = get_logger(__name__)

# Columns whose value is the same for every row of a file: written once per line from a constant prefix.
LINEAGE_PREFIX_COLUMNS = tuple(c for c in LINEAGE_COLUMNS if c != "row_number")
COPY_NULL = "\\N"


@dataclass(frozen=True)
class LandResult:
    file_id: int
    status: str  # landed | duplicate | failed | already (someone else did it)
    rows: int = 0
    encoding: str | None = None
    error: str | None = None
    spool_seconds: float | None = None
    copy_seconds: float | None = None


def copy_columns(spec: ExtractSpec) -> list[str]:
    """Column order of a landing COPY line: the constant lineage prefix, the row number, the fields."""
    return [*LINEAGE_PREFIX_COLUMNS, "row_number", *spec.column_names]


def copy_statement(spec: ExtractSpec) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(naming.RAW, naming.raw_table(spec)),
        sql.SQL(", ").join(sql.Identifier(c) for c in copy_columns(spec)),
    )


def lineage_prefix(record: ledger.FileRecord, file_hash: str, landed_at: datetime) -> str:
    """The escaped COPY text of the constant lineage columns, ending with a tab."""
    values = [
        record.file_id,
        record.s3_bucket,
        record.s3_key,
        record.s3_version_id,
        file_hash,
        record.date_extracted.isoformat(),
        record.extract_type,
        record.per_org_id,
        record.practice_id,
        record.load_run_id,
        landed_at.isoformat(),
    ]
    return "".join(COPY_NULL + "\t" if v is None else escape_copy_text(str(v)) + "\t" for v in values)


def _find_duplicate(conn: psycopg.Connection, record: ledger.FileRecord, file_hash: str) -> int | None:
    """A loaded file of the same batch (extract, organisation, practice, window) with the same bytes:
    the provider re-wrote the object, or delivered it again under another folder. The same bytes named
    as another batch are a different batch (their rows get that batch's DateExtracted) and do load."""
    row = conn.execute(
        "SELECT file_id FROM etl.load_run_files WHERE file_hash = %s AND extract = %s AND file_id <> %s "
        "AND date_extracted = %s AND date_to = %s AND per_org_id IS NOT DISTINCT FROM %s "
        "AND practice_id IS NOT DISTINCT FROM %s AND status IN ('landed', 'staged', 'merged') "
        "ORDER BY file_id LIMIT 1",
        (file_hash, record.extract, record.file_id, record.date_extracted, record.date_to, record.per_org_id,
         record.practice_id),
    ).fetchone()
    return row[0] if row else None


def land_file(conn: psycopg.Connection, s3_client, file_id: int, settings: Settings | None = None) -> LandResult:
    """Land one file version (safe to call twice, or from two workers at once)."""
    settings = settings or get_settings()
    record = ledger.get(conn, file_id)
    conn.commit()
    with bound(load_run_id=record.load_run_id, s3_key=record.s3_key, file_id=file_id):
        try:
            result = _land(conn, s3_client, file_id, settings)
        except IndiciFormatError as exc:
            conn.rollback()
            detail = {
                "stage": "land",
                "kind": exc.kind,
                "row_number": exc.row_number,
                "expected": exc.expected,
                "found": exc.found,
                "byte_offset": exc.byte_offset,
            }
            ledger.mark_failed(conn, file_id, f"{record.s3_key}: {exc.detail}", detail, retryable=False)
            log.error("file failed to land", kind=exc.kind, row_number=exc.row_number, error=exc.detail)
            return LandResult(file_id, "failed", error=exc.detail)
        except (psycopg.OperationalError, OSError) as exc:
            conn.rollback()
            ledger.mark_failed(
                conn, file_id, f"{record.s3_key}: {type(exc).__name__}: {exc}",
                {"stage": "land", "kind": "transient"}, retryable=True,
            )
            log.error("file landing interrupted; will be retried", error=type(exc).__name__)
            raise
        log.info("file landed" if result.status == "landed" else f"file {result.status}", rows=result.rows,
                 encoding=result.encoding, spool_seconds=result.spool_seconds, copy_seconds=result.copy_seconds)
        return result


def _land(conn: psycopg.Connection, s3_client, file_id: int, settings: Settings) -> LandResult:
    with conn.transaction():
        ledger.lock(conn, LockSpace.LAND, file_id)
        record = ledger.get(conn, file_id, for_update=True)
        if record.status not in ("pending", "failed"):
            return LandResult(file_id, "already")
        if record.status == "failed" and not record.retryable:
            return LandResult(file_id, "already")
        spec = get_spec(record.extract)
        with tempfile.TemporaryFile(prefix="indici-") as spool:
            started = time.perf_counter()
            file_hash, size = spool_version(
                s3_client, record.s3_bucket, record.s3_key, record.s3_version_id, spool,
                settings.s3_read_chunk_bytes,
            )
            duplicate_of = _find_duplicate(conn, record, file_hash)
            if duplicate_of is not None:
                conn.execute(
                    "UPDATE etl.load_run_files SET status = 'duplicate', duplicate_of = %s, file_hash = %s, "
                    "attempts = attempts + 1, updated_at = now() WHERE file_id = %s",
                    (duplicate_of, file_hash, file_id),
                )
                return LandResult(file_id, "duplicate")
            spooled = time.perf_counter()
            landed_at = datetime.now(timezone.utc)
            chunks = iter(lambda: spool.read(settings.s3_read_chunk_bytes), b"")
            reader = IndiciReader(chunks, spec.field_count)
            prefix = lineage_prefix(record, file_hash, landed_at)
            with conn.cursor() as cur:
                # A writer thread sends each block while the reader decodes the next one.
                with cur.copy(copy_statement(spec), writer=BoundedQueuedWriter(cur)) as copy:
                    for block in reader.copy_bytes(prefix):
                        copy.write(block)
                rows_raw = cur.rowcount
            if reader.sha256 != file_hash or reader.bytes_read != size:
                raise OSError("the spooled copy of the object changed while it was read")
            if rows_raw != reader.rows_read:
                raise RuntimeError(f"COPY stored {rows_raw} rows but the file has {reader.rows_read}")
            conn.execute(
                "UPDATE etl.load_run_files SET status = 'landed', file_hash = %s, encoding = %s, "
                "rows_read = %s, rows_raw = %s, landed_at = %s, attempts = attempts + 1, error = NULL, "
                "error_detail = NULL, updated_at = now() WHERE file_id = %s",
                (file_hash, reader.encoding + ("+bom" if reader.bom else ""), reader.rows_read, rows_raw,
                 landed_at, file_id),
            )
            return LandResult(file_id, "landed", rows=rows_raw, encoding=reader.encoding,
                              spool_seconds=spooled - started, copy_seconds=time.perf_counter() - spooled)
