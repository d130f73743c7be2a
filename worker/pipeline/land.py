"""Raw landing: one file version from S3 into raw.<t>_raw, whole or not at all.

`land_version` is the step: spool the object version to a temporary file while hashing it, refuse
content already loaded under another version (duplicate), then stream the bytes through the Indici
reader into COPY with every row's number and lineage (sent by a writer thread, so decoding overlaps
the COPY). It runs inside the transaction that
worker/pipeline/lifecycle.py opens (the file's advisory lock held, its ledger row re-read), never
commits and never writes the file's state: it returns what happened and the lifecycle records it in
the same transaction. A format error rolls that transaction back, so a bad file lands no rows, and the
lifecycle records it as failed with the row, the counts and the reason.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from contracts import naming
from contracts.model import LINEAGE_COLUMNS, ExtractSpec
from contracts.registry import get as get_spec
from worker.io.copy_writer import BoundedQueuedWriter
from worker.io.indici_reader import IndiciReader, escape_copy_text
from worker.io.s3 import spool_version
from worker.log import get_logger
from worker.pipeline import ledger
from worker.settings import Settings, get_settings

log = get_logger(__name__)

# Columns whose value is the same for every row of a file: written once per line from a constant prefix.
# landed_at is not sent: its default, now(), is the landing transaction's start, the value the ledger
# records too (parsing one timestamptz a row cost the raw COPY about 8%: 300k Appointments 3.63 s ->
# 3.33 s, medians of 8).
LINEAGE_PREFIX_COLUMNS = tuple(c for c in LINEAGE_COLUMNS if c not in ("row_number", "landed_at"))
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
    # What the lifecycle records in the ledger (landed: hash, encoding, counts; duplicate: of which file).
    file_hash: str | None = None
    rows_read: int | None = None
    landed_at: datetime | None = None
    duplicate_of: int | None = None
    # The typing of the same pass (worker/pipeline/typing_engine StagingTee), when the caller asked for it.
    tee: Any = dataclasses.field(default=None, repr=False, compare=False)


def copy_columns(spec: ExtractSpec) -> list[str]:
    """Column order of a landing COPY line: the constant lineage prefix, the row number, the fields."""
    return [*LINEAGE_PREFIX_COLUMNS, "row_number", *spec.column_names]


def copy_statement(spec: ExtractSpec) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(naming.RAW, naming.raw_table(spec)),
        sql.SQL(", ").join(sql.Identifier(c) for c in copy_columns(spec)),
    )


def lineage_prefix(record: ledger.FileRecord, file_hash: str) -> str:
    """The escaped COPY text of the constant lineage columns (LINEAGE_PREFIX_COLUMNS), ending with a tab."""
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


def land_file(conn: psycopg.Connection, s3_client, file_id: int, settings: Settings | None = None, *,
              stage: bool = False) -> LandResult:
    """Land one file version through the lifecycle (its lock, state and commit); safe to call twice,
    or from two workers at once. Kept for callers of the step by file id (bench, tests): the landing
    alone unless `stage` (then the file is staged in the same pass, as the pipeline's land step does)."""
    from worker.pipeline import lifecycle

    return lifecycle.land_file(conn, s3_client, file_id, settings or get_settings(), stage=stage)


TeeFactory = Callable[[ledger.FileRecord], Any]


def land_version(conn: psycopg.Connection, s3_client, record: ledger.FileRecord, settings: Settings,
                 tee: TeeFactory | None = None) -> LandResult:
    """Spool, hash and COPY one file version in the caller's transaction; no commit, no state write.

    `tee`, given the record with its hash, returns a consumer of the COPY blocks (or None): each block
    sent to raw is also handed to its `feed`, so the file is typed in the same pass (staging while
    landing); it is returned in the result, or abandoned if the landing fails."""
    file_id = record.file_id
    spec = get_spec(record.extract)
    with tempfile.TemporaryFile(prefix="indici-") as spool:
        started = time.perf_counter()
        file_hash, size = spool_version(
            s3_client, record.s3_bucket, record.s3_key, record.s3_version_id, spool,
            settings.s3_read_chunk_bytes,
        )
        duplicate_of = _find_duplicate(conn, record, file_hash)
        if duplicate_of is not None:
            return LandResult(file_id, "duplicate", file_hash=file_hash, duplicate_of=duplicate_of)
        spooled = time.perf_counter()
        # raw.landed_at's default: the same instant on every row, and in the ledger
        now = conn.execute("SELECT now()").fetchone()
        assert now is not None
        landed_at: datetime = now[0]
        chunks = iter(lambda: spool.read(settings.s3_read_chunk_bytes), b"")
        # The spool hashed these bytes as they came from S3; the reader reads them back from a private
        # temporary file, so it does not hash them again (the size is still checked).
        reader = IndiciReader(chunks, spec.field_count, hashed=False)
        prefix = lineage_prefix(record, file_hash)
        typer = tee(dataclasses.replace(record, file_hash=file_hash)) if tee is not None else None
        try:
            with conn.cursor() as cur:
                # A writer thread sends each block while the reader decodes the next one (and the tee
                # types the blocks gathered so far).
                with cur.copy(copy_statement(spec), writer=BoundedQueuedWriter(cur)) as copy:
                    for block in reader.copy_bytes(prefix):
                        copy.write(block)
                        if typer is not None:
                            typer.feed(block)
                rows_raw = cur.rowcount
            if reader.bytes_read != size:
                raise OSError("the spooled copy of the object changed while it was read")
            if rows_raw != reader.rows_read:
                raise RuntimeError(f"COPY stored {rows_raw} rows but the file has {reader.rows_read}")
        except BaseException as exc:
            if typer is not None:
                typer.abandon(exc)
            raise
        return LandResult(file_id, "landed", rows=rows_raw, encoding=f"{reader.encoding}{'+bom' if reader.bom else ''}",
                          spool_seconds=spooled - started, copy_seconds=time.perf_counter() - spooled,
                          file_hash=file_hash, rows_read=reader.rows_read, landed_at=landed_at, tee=typer)
