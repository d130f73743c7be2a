"""Stage one landed file with the typing engine: raw rows out of Postgres, typed in Arrow, binary COPY in.

On the file's own connection and transaction (the caller's):

1. The file's raw rows are streamed out with `COPY (SELECT row_number, <fields> FROM raw.<t> WHERE
   load_file_id = ...) TO STDOUT (FORMAT csv)` on a second connection, by a reader thread (a connection
   runs one COPY at a time, and the typed rows go back in on the file's own connection). The first pass
   types what has arrived while Postgres produces the rest (it used to wait for the whole file: 18% of
   staging); every chunk is also kept in a local spool file for a second pass. The raw rows were
   committed by the landing, so the second connection sees them; the stage's reconciliation (read = raw
   = staged + rejected) fails the file should it ever see fewer.
2. A pass over the spool, inside a savepoint, holding nothing back (a file rarely repeats a key).
   Should stg's unique (load_file_id, natural key) constraint fail, the savepoint is rolled back and
   the key pass runs: the natural-key columns (a narrow COPY) are typed and hashed, and hashes seen
   more than once mark the rows that may be superseded; then the pass runs again.
3. The pass, block by block (`block_bytes` of CSV, about 5,000 rows): the engine types the block; kept rows
   go straight into `COPY stg.<t> ... FROM STDIN (FORMAT binary)` (pgpq), sent by a writer thread
   while the next block is typed; rejects are encoded into a second spool; rows whose key hash repeats
   are held back.
4. The held-back rows are resolved exactly (typed key, last row wins): the survivors join the stg COPY,
   the others become `duplicate_key` rejects. Then the rejects spool is copied into etl.rejects_<t>.

Memory: one block of strings and its typed columns, the key hashes (8 bytes a row) and the held-back
rows; never the whole file as Python objects.
"""

from __future__ import annotations

import io
import json
import queue
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import IO, Callable, Generator, Iterable, Iterator

import numpy as np
import pgpq
import pgpq.encoders
import pgpq.schema
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg import sql

from contracts import naming
from contracts.model import ExtractSpec
from contracts.sql.staging import ROW_TEXT_SEPARATOR
from contracts.types import ContractType
from worker.io.copy_writer import BoundedQueuedWriter
from worker.pipeline.typing_engine.engine import ROW_NUMBER, DqCounts, TypedBlock, TypingEngine

# The engine types blocks of about 5,000 rows: large enough that the per-call overhead of the compute
# calls (a fixed number per column and block) is small, small enough for a flat memory. The calls grow
# with the columns and so do the bytes of a row, so a block's bytes follow the extract's width
# (block_bytes): 4 MiB for Appointments' 64 columns, 8 MiB (READ_BYTES, the most) for Patients' 220.
# Measured with `python -m bench.typing --rows R --repeats 3 --read-mib M`, medians: 1M Appointments
# at 4 MiB 9.64 s with a peak RSS of 229 MB, at 6 MiB 8.93 s / 261 MB, at 8 MiB 8.92 s / 270 MB (300k: 2.69
# s / 245 MB at 4 MiB, 2.75 s / 292 MB at 8); 100k Patients at 4 MiB 2.57 s, at 8 MiB 2.20 s. 4 MiB for
# Appointments trades 0.7 s of typing per 1M rows for 40-50 MB less: it keeps a worker process under
# 300 MB. Arrow's CSV reader parses each block in CSV_BLOCK_BYTES pieces (fastest for it).
READ_BYTES = 8 << 20
MIN_READ_BYTES = 4 << 20
READ_BYTES_PER_COLUMN = 64 << 10
CSV_BLOCK_BYTES = 4 << 20
# Kept rows are encoded for stg's binary COPY in slices of about this much Arrow data (_encode_slices).
# `python -m bench.typing --rows 100000 --extract Patients` (220 columns, 8 MiB blocks), peak RSS of the
# typing process and median seconds, with ENCODE_BYTES set by hand, two interleaved rounds, jemalloc:
# whole blocks 276-278 MB, 5.39-6.15 s; 4 MiB slices 267-269 MB, 5.54-5.81 s; 1 MiB slices 261-265 MB,
# 5.61-5.65 s. With mimalloc (the pool before memory.py): whole blocks 300-301 MB, 1 MiB slices
# 276-279 MB. The stg bytes are the same (the benchmark's SHA-256).
ENCODE_BYTES = 1 << 20
# Text of the blocks a pass holds at once when it types on several threads (block_bytes): as much as one
# block of the widest extract typed alone (READ_BYTES), so a worker's memory stays where it was sized.
# `python -m bench.typing --rows 300000 --threads 2 --read-mib M`: 4 MiB blocks (12 MiB in flight)
# 2.61-3.59 s and 263-277 MB, 2.67 MiB (8 MiB in flight) 3.26-4.03 s and 229-233 MB, one thread at
# 4 MiB 4.86-5.29 s and 202-211 MB.
IN_FLIGHT_BYTES = READ_BYTES
_COPY_READ = 1 << 20


def block_bytes(spec: ExtractSpec, threads: int = 1) -> int:
    """The bytes of text the engine types at a time for this extract (about 5,000 rows). With `threads`
    typing at once (typed_blocks), threads + 1 blocks are in memory together: each is then at most
    IN_FLIGHT_BYTES / (threads + 1)."""
    size = min(READ_BYTES, max(MIN_READ_BYTES, READ_BYTES_PER_COLUMN * len(spec.columns)))
    if threads > 1:
        size = min(size, max(1 << 20, IN_FLIGHT_BYTES // (threads + 1)))
    return size


@dataclass
class EngineResult:
    staged: int
    rejected: int
    superseded: int
    counts: DqCounts = field(default_factory=DqCounts)
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of the parts: spool (raw out), keys, typing (read + type + encode), copy_wait (until the
    stg COPY completed after the last block), rejects."""
    rows_typed_ahead: int = 0
    """Rows typed while the raw COPY ran (staging while landing, typing_engine/tee.py), of staged + rejected."""


def mapped_domains(conn: psycopg.Connection, spec: ExtractSpec) -> dict[str, list[str]]:
    """The mapped values of each domain of the extract's columns: a column whose unmapped values reject
    rows is checked against them, and every domain column's unmapped values are counted (DqCounts)."""
    found: dict[str, list[str]] = {}
    for col in spec.columns:
        if col.domain and col.domain not in found:
            rows = conn.execute(
                sql.SQL("SELECT value FROM {} WHERE is_mapped").format(
                    sql.Identifier(naming.ETL, naming.domain_table(col.domain))
                )
            ).fetchall()
            found[col.domain] = [r[0] for r in rows]
    return found


def _spool_raw(conn: psycopg.Connection, spec: ExtractSpec, file_id: int, columns: list[str], out: IO[bytes]) -> None:
    with conn.cursor() as cur, cur.copy(_raw_statement(spec, file_id, columns)) as copy:
        for data in copy:
            out.write(data)
    out.flush()
    out.seek(0)


def _raw_statement(spec: ExtractSpec, file_id: int, columns: list[str]) -> sql.Composed:
    return sql.SQL("COPY (SELECT {} FROM {} WHERE load_file_id = {}) TO STDOUT (FORMAT csv)").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        sql.Identifier(naming.RAW, naming.raw_table(spec)),
        sql.Literal(file_id),
    )


class _RawStream:
    """The file's raw rows as CSV chunks, read by a thread on its own connection to the same database
    (same login and application_name), each chunk also written to `spool`. Bounded: at most DEPTH chunks
    of about CHUNK_BYTES wait for the typing."""

    CHUNK_BYTES = 1 << 20
    DEPTH = 8

    def __init__(self, conn: psycopg.Connection, statement: sql.Composed, spool: IO[bytes]) -> None:
        self._conninfo = conn.info.dsn
        self._password = conn.info.password
        self._application = conn.info.parameter_status("application_name") or "indici-ingest"
        self._statement = statement.as_string(conn)
        self._spool = spool
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=self.DEPTH)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._ended = False  # the end marker was taken from the queue
        self.rows = 0  # raw rows read (complete once chunks() or drain() has returned)
        self._thread = threading.Thread(target=self._read, name="raw-out", daemon=True)
        self._thread.start()

    def _put(self, item: bytes | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def _read(self) -> None:
        try:
            with psycopg.connect(self._conninfo, password=self._password or None, autocommit=True,
                                 application_name=f"{self._application} raw-out"[:63]) as reader:
                with reader.cursor() as cur, cur.copy(self._statement) as copy:
                    parts: list[bytes] = []
                    size = 0
                    for data in copy:  # one message per row
                        self.rows += 1
                        parts.append(bytes(data))
                        size += len(data)
                        if size >= self.CHUNK_BYTES:
                            chunk = b"".join(parts)
                            self._spool.write(chunk)
                            if not self._put(chunk):
                                return
                            parts, size = [], 0
                    if parts:
                        chunk = b"".join(parts)
                        self._spool.write(chunk)
                        self._put(chunk)
        except BaseException as exc:  # re-raised in the typing thread
            self._error = exc
        finally:
            self._put(None)

    def chunks(self) -> Iterator[bytes]:
        """The chunks not taken yet (none once the end was taken), then waits for the reader."""
        while not self._ended and (chunk := self._queue.get()) is not None:
            yield chunk
        self._ended = True
        self.finish()

    def finish(self) -> None:
        """Wait for the reader; the spool then holds the whole file. Raises the reader's error."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        self._spool.flush()

    def drain(self) -> None:
        """Read the rest without typing it (it is in the spool)."""
        for _ in self.chunks():
            pass

    def close(self) -> None:
        """Stop the reader (the typing failed) and wait for it."""
        self._stop.set()
        self._thread.join()


def _spool_chunks(spool: IO[bytes], read_bytes: int) -> Iterator[bytes]:
    spool.seek(0)
    while data := spool.read(read_bytes):
        yield data


def _record_end(buf: bytes) -> int:
    """The length of the complete CSV records at the start of `buf` (0 if none): the last LF outside a
    quoted value. Postgres quotes a value holding a quote, delimiter, CR or LF and doubles its quotes, so
    an LF ends a record exactly when the number of quotes before it is even."""
    p = buf.rfind(b"\n")
    while p >= 0:
        if buf.count(b'"', 0, p) % 2 == 0:
            return p + 1
        p = buf.rfind(b"\n", 0, p)
    return 0


# A block of a file's text, parsed into the table the engine types when called (on a typing thread,
# typed_blocks): Arrow's parse is a quarter of the typing's time and runs without the GIL.
Block = Callable[[], pa.Table]


def _batches(chunks: Iterable[bytes], columns: list[str], read_bytes: int) -> Iterator[pa.Table]:
    """The CSV chunks as tables of about `read_bytes` each (_csv_blocks, parsed here in turn)."""
    return (block() for block in _csv_blocks(chunks, columns, read_bytes))


def _csv_blocks(chunks: Iterable[bytes], columns: list[str], read_bytes: int) -> Iterator[Block]:
    """The CSV chunks as blocks of about `read_bytes` each, parsed by Arrow in 4 MiB pieces on the thread
    that calls the block (Arrow's own threads cost memory). Cut at record ends: Arrow's streaming reader
    reads a Python file ahead without limit."""
    types = {c: pa.string() for c in columns}
    types[ROW_NUMBER] = pa.int64()
    options = dict(
        read_options=pacsv.ReadOptions(column_names=columns, block_size=CSV_BLOCK_BYTES, use_threads=False),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=False,
                                             quoted_strings_can_be_null=False),
    )
    pending: list[bytes] = []
    size = 0
    carry = b""

    def parse(final: bool) -> Iterator[Block]:
        nonlocal carry
        buf = carry + b"".join(pending) if carry else b"".join(pending)
        pending.clear()
        cut = len(buf) if final else _record_end(buf)
        if cut:
            yield partial(pacsv.read_csv, pa.py_buffer(memoryview(buf)[:cut]), **options)
        carry = buf[cut:]

    for chunk in chunks:
        pending.append(chunk)
        size += len(chunk)
        if size >= read_bytes:
            yield from parse(final=False)
            size = 0
    if pending or carry:
        yield from parse(final=True)


def _encoder(schema: pa.Schema, jsonb: tuple[str, ...]) -> pgpq.ArrowToPostgresBinaryEncoder:
    encoders = {f.name: pgpq.ArrowToPostgresBinaryEncoder.infer_encoder(f) for f in schema}
    for name in jsonb:
        encoders[name] = pgpq.encoders.StringEncoderBuilder.new_with_output(schema.field(name), pgpq.schema.Jsonb())
    return pgpq.ArrowToPostgresBinaryEncoder.new_with_encoders(schema, encoders)


class _Lineage:
    """The constant lineage columns of the file's stg rows."""

    CONSTANT = ("s3_version_id", "file_hash", "date_extracted", "date_to", "load_run_id")

    def __init__(self, record, engine: TypingEngine) -> None:
        self.values = [
            ("s3_version_id", pa.scalar(record.s3_version_id, pa.string())),
            ("file_hash", pa.scalar(record.file_hash, pa.string())),
            ("date_extracted", pa.scalar(record.date_extracted, pa.timestamp("us", tz="UTC"))),
            ("date_to", pa.scalar(record.date_to, pa.timestamp("us", tz="UTC"))),
            ("load_run_id", pa.scalar(record.load_run_id, pa.int64())),
        ]
        self.file_id = pa.scalar(record.file_id, pa.int64())
        fields = [pa.field("load_file_id", pa.int64())] + list(engine.stg_schema)
        fields += [pa.field(name, value.type) for name, value in self.values]
        self.schema = pa.schema(fields)

    @staticmethod
    def names(spec: ExtractSpec) -> list[str]:
        """The stg columns a pass writes, in its COPY's order."""
        return ["load_file_id", ROW_NUMBER, *spec.column_names, "field_errors", *_Lineage.CONSTANT]

    def stg_batch(self, kept: pa.Table) -> pa.RecordBatch:
        n = kept.num_rows
        arrays = [pa.repeat(self.file_id, n)] + [c.combine_chunks() for c in kept.columns]
        arrays += [pa.repeat(value, n) for _, value in self.values]
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)


def _encode_slices(batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
    """A block's kept rows in zero-copy slices of about ENCODE_BYTES of Arrow data: pgpq encodes a batch
    into one buffer it grows as it goes and then copies into a bytes object, both on the C heap, so one
    encoding of a whole block left its high-water mark on the worker's RSS beside the Arrow pool's.
    The tuples are the same bytes in the same order (the binary COPY header is written once, apart)."""
    n = batch.num_rows
    step = max(1, n * ENCODE_BYTES // max(1, batch.nbytes))
    for start in range(0, n, step):
        yield batch.slice(start, step)


def _copy_into(cur: psycopg.Cursor, table: sql.Composable, columns: list[str]):
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
        table, sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )
    return cur.copy(statement, writer=BoundedQueuedWriter(cur))


def stage_rows(conn: psycopg.Connection, spec: ExtractSpec, record, threads: int = 1) -> EngineResult:
    """Type the file's raw rows into stg.<t> and etl.rejects_<t>; the counts for dq.

    Optimistic about duplicates: the first pass holds nothing back, inside a savepoint. A natural key
    repeated among the kept rows violates stg's unique (load_file_id, key) constraint; then the
    savepoint is rolled back, the key pass finds the repeated keys and the second pass holds their rows
    back and applies the duplicate-key rule. `threads`: blocks typed at once (typed_blocks).
    """
    engine = TypingEngine(spec, mapped_domains(conn, spec))
    columns = [ROW_NUMBER, *spec.column_names]
    laps = _Laps()
    lap = laps.lap
    expected = getattr(record, "rows_raw", None)
    block = block_bytes(spec, threads)
    with tempfile.TemporaryFile(prefix="indici-stage-") as spool:

        def spooled() -> Iterator[Block]:
            return _csv_blocks(_spool_chunks(spool, block), columns, block)

        try:
            if isinstance(expected, int) and expected > 0:
                # The landing committed and counted the raw rows: read them on a second connection.
                stream = _RawStream(conn, _raw_statement(spec, record.file_id, columns), spool)
                try:
                    with conn.transaction():
                        result = _pass(conn, spec, record, engine, _csv_blocks(stream.chunks(), columns, block),
                                       None, lap, threads)
                        if stream.rows != expected:
                            raise _NotAllVisible(stream.rows)
                finally:
                    stream.drain()  # the rest of the file into the spool, should a second pass need it
                    stream.close()
            else:
                # Raw rows this transaction may have written itself (no count yet): read them here.
                _spool_raw(conn, spec, record.file_id, columns, spool)
                lap("spool")
                with conn.transaction():
                    result = _pass(conn, spec, record, engine, spooled(), None, lap, threads)
        except _NotAllVisible:
            # Not every raw row was visible to the second connection: this transaction wrote them. The
            # savepoint is rolled back; stage from this connection's own view.
            lap("raw_not_visible")
            spool.seek(0)
            spool.truncate()
            _spool_raw(conn, spec, record.file_id, columns, spool)
            try:
                with conn.transaction():
                    result = _pass(conn, spec, record, engine, spooled(), None, lap, threads)
            except psycopg.errors.UniqueViolation:
                result = _second_pass(conn, spec, record, engine, spooled, lap, threads)
        except psycopg.errors.UniqueViolation:
            result = _second_pass(conn, spec, record, engine, spooled, lap, threads)
    result.seconds = laps.seconds
    return result


class _Laps:
    """Wall seconds of a staging's parts: `lap(name)` adds the time since the previous lap to `name`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._clock = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._clock
        self._clock = now


class _NotAllVisible(Exception):
    """The second connection read fewer (or more) raw rows than the ledger counted."""


def _second_pass(conn: psycopg.Connection, spec: ExtractSpec, record, engine: TypingEngine,
                 blocks: Callable[[], Iterable[Block]], lap, threads: int = 1) -> EngineResult:
    """The file repeats a natural key: find the repeated keys, then type the spool again holding their
    rows back for the duplicate-key rule."""
    lap("duplicates_found")
    repeated = _repeated_keys(conn, spec, record, engine)
    lap("keys")
    return _pass(conn, spec, record, engine, blocks(), repeated, lap, threads)


def _repeated_keys(conn: psycopg.Connection, spec: ExtractSpec, record, engine: TypingEngine) -> np.ndarray:
    """The 64-bit hashes of typed natural keys that occur more than once in the file (among rows whose
    key parses), from a narrow COPY of the key columns."""
    hashes = []
    key_columns = [ROW_NUMBER, *spec.natural_key]
    with tempfile.TemporaryFile(prefix="indici-keys-") as keys_spool:
        _spool_raw(conn, spec, record.file_id, key_columns, keys_spool)
        for batch in _batches(_spool_chunks(keys_spool, 16 << 20), key_columns, 16 << 20):
            ok, typed = engine.check_keys(batch)
            hashes.append(engine.key_hashes(typed)[ok])
    all_hashes = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    unique, repeats = np.unique(all_hashes, return_counts=True)
    return unique[repeats > 1]


@dataclass
class TypedAhead:
    """The first blocks of a first pass, typed before its COPY began (typing_engine/tee.py types them
    while the raw COPY runs): the pass's rows with their stg COPY bytes kept in `spool`, in file order."""

    rows: "_TypedRows"
    spool: IO[bytes]

    def close(self) -> None:
        self.rows.close()
        self.spool.close()


@contextmanager
def _ahead_sent(ahead: TypedAhead | None, write: Callable[[bytes], None]) -> Iterator[Callable[[], None]]:
    """Send the rows typed ahead into the COPY from a thread, so that the next blocks are typed meanwhile;
    gives `ready`, which waits for them to be sent (once) and sends the pass's further rows directly.
    Called before a new block is taken, it keeps the COPY's rows in file order."""
    if ahead is None:
        yield lambda: None
        return
    errors: list[BaseException] = []

    def send() -> None:
        try:
            ahead.spool.seek(0)
            while data := ahead.spool.read(_COPY_READ):
                write(data)
        except BaseException as exc:  # raised in the pass's thread by ready()
            errors.append(exc)

    sender = threading.Thread(target=send, name="indici-stg-ahead", daemon=True)
    sender.start()
    sent = False

    def ready() -> None:
        nonlocal sent
        if not sent:
            sender.join()
            sent = True
            if errors:
                raise errors[0]
            ahead.rows.write_stg = write

    try:
        yield ready
    finally:
        sender.join()


def type_blocks_into(rows: "_TypedRows", blocks: Iterable[Block], engine: TypingEngine, threads: int,
                     ahead: TypedAhead | None, write: Callable[[bytes], None]) -> None:
    """The pass's typing: `blocks` typed (typed_blocks) and taken by `rows` in order, after the rows typed
    `ahead` (sent into `write` first, while the first blocks are typed); then the end of the encodings."""
    with closing(typed_blocks(blocks, engine, threads)) as typed, _ahead_sent(ahead, write) as ready:
        for batch, block, counts in typed:
            ready()
            rows.take(batch, block, counts)
        ready()
    rows.end()


def _pass(conn: psycopg.Connection, spec: ExtractSpec, record, engine: TypingEngine, blocks: Iterable[Block],
          repeated: np.ndarray | None, lap, threads: int = 1, ahead: TypedAhead | None = None) -> EngineResult:
    """One pass over the raw rows (blocks of row_number and the fields as text): typed rows into stg by
    a binary COPY that Postgres runs while the next blocks are typed (on `threads` threads), rejects
    after. Kept rows whose key hash is in `repeated` are held back and resolved by the duplicate-key rule
    at the end. `ahead`: the first blocks, already typed (a first pass: `repeated` is None); `blocks`
    are then the rest."""
    target = _prepare_target(conn, spec)
    with conn.cursor() as cur:
        with _copy_into(cur, target.table, target.columns) as copy:
            rows = ahead.rows if ahead is not None else _TypedRows(spec, record, engine, repeated, copy.write)
            try:
                type_blocks_into(rows, blocks, engine, threads, ahead, copy.write)
            except BaseException:
                rows.close()
                raise
            lap("typing")
        lap("copy_wait")
        return _complete(cur, spec, target, rows, lap)


TypedItem = tuple[pa.Table, TypedBlock, DqCounts]


def typed_blocks(blocks: Iterable[Block], engine: TypingEngine,
                 threads: int = 1) -> Generator[TypedItem, None, None]:
    """Each block parsed and typed (the table, its TypedBlock and the block's own dq counts), in the
    blocks' order. With `threads` > 1 that many blocks are parsed and typed at once on a pool of threads
    while the caller encodes and sends the oldest: Arrow's parse and compute kernels run without the GIL
    (a py-spy profile of 300k Appointments: 21% of the typing's samples held it). The gain is bounded by
    the other core's work: the backend taking stg's binary COPY used 2.1-2.9 CPU s per 300k rows while
    Python used 3.4-4.1 (docs/ARCHITECTURE.md, staging, "Typing threads"). At most threads + 1 blocks are parsed or
    typed and not yet taken (block_bytes sizes them for that). An error of a block is raised when its
    turn comes; closing the iterator cancels the blocks not started and waits for those running."""

    def work(block: Block) -> TypedItem:
        batch = block()
        counts = DqCounts()
        return batch, engine.type_block(batch, counts), counts

    if threads <= 1:
        for block in blocks:
            yield work(block)
        return
    pending: deque[Future[TypedItem]] = deque()
    with ThreadPoolExecutor(threads, thread_name_prefix="indici-typing") as pool:
        try:
            for block in blocks:
                pending.append(pool.submit(work, block))
                if len(pending) > threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


@dataclass(frozen=True)
class _Target:
    """Where a pass's binary COPY goes: stg.<t>, or a temp table with numeric columns as text (pgpq cannot
    encode Postgres numeric; the INSERT casts them)."""

    table: sql.Identifier
    columns: list[str]
    numeric: list[str]


def _prepare_target(conn: psycopg.Connection, spec: ExtractSpec) -> _Target:
    stg = sql.Identifier(naming.STG, naming.stg_table(spec))
    numeric = [c.column for c in spec.columns if c.type is ContractType.NUMERIC]
    columns = _Lineage.names(spec)
    if not numeric:
        return _Target(stg, columns, numeric)
    conn.execute(sql.SQL("CREATE TEMP TABLE stg_engine_load (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(stg))
    for name in numeric:
        conn.execute(sql.SQL("ALTER TABLE stg_engine_load ALTER COLUMN {} TYPE text").format(sql.Identifier(name)))
    return _Target(sql.Identifier("stg_engine_load"), columns, numeric)


def _complete(cur: psycopg.Cursor, spec: ExtractSpec, target: _Target, rows: "_TypedRows", lap) -> EngineResult:
    """After the stg COPY: the numeric columns' cast into stg, then the rejects' COPY."""
    try:
        if target.numeric:
            stg = sql.Identifier(naming.STG, naming.stg_table(spec))
            names = sql.SQL(", ").join(sql.Identifier(c) for c in target.columns)
            values = sql.SQL(", ").join(
                sql.SQL("{}::numeric").format(sql.Identifier(c)) if c in target.numeric else sql.Identifier(c)
                for c in target.columns
            )
            cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM stg_engine_load").format(stg, names, values))
            cur.execute("DROP TABLE stg_engine_load")
        if rows.rejected or rows.superseded:
            rejects = sql.Identifier(naming.ETL, naming.rejects_table(spec))
            with _copy_into(cur, rejects, REJECTS_SCHEMA.names) as copy:
                rows.rejects_spool.seek(0)
                while data := rows.rejects_spool.read(8 << 20):
                    copy.write(data)
        lap("rejects")
    finally:
        rows.close()
    return EngineResult(staged=rows.staged, rejected=rows.rejected, superseded=rows.superseded, counts=rows.counts)


REJECTS_SCHEMA = pa.schema(
    [pa.field("load_file_id", pa.int64()), pa.field(ROW_NUMBER, pa.int64()), pa.field("load_run_id", pa.int64()),
     pa.field("row_text", pa.string()), pa.field("field_errors", pa.string())]
)


class _TypedRows:
    """The typing of one pass, block by block: kept rows encoded for stg's binary COPY and handed to
    `write_stg` (a live COPY, or a spool), rejects encoded into a spool, the dq counts. Kept rows whose
    key hash is in `repeated` are held back until `end`, which applies the duplicate-key rule to them."""

    def __init__(self, spec: ExtractSpec, record, engine: TypingEngine, repeated: np.ndarray | None,
                 write_stg) -> None:
        self.spec, self.engine, self.repeated, self.write_stg = spec, engine, repeated, write_stg
        self.counts = DqCounts()
        self.lineage = _Lineage(record, engine)
        self.run_id = pa.scalar(record.load_run_id, pa.int64())
        self.reject_encoder = _encoder(REJECTS_SCHEMA, ("field_errors",))
        self.stg_encoder = _encoder(self.lineage.schema, ("field_errors",))
        self.staged = self.rejected = self.superseded = 0
        self.held: list[tuple[pa.Table, pa.Array, list]] = []
        self.rejects_spool = tempfile.TemporaryFile(prefix="indici-rejects-")
        self.rejects_spool.write(self.reject_encoder.write_header())
        self.write_stg(self.stg_encoder.write_header())

    def _count_kept(self, block_kept: pa.Table, violations: list, keep_mask: np.ndarray | None) -> None:
        for name in self.spec.column_names:
            self.counts.stg_nulls[name] += block_kept.column(name).null_count
        for nullified, key in violations:
            n = int((nullified if keep_mask is None else nullified[keep_mask]).sum())
            if n:
                self.counts.rule_violations[key] += n

    def _write_rejects(self, table: pa.Table) -> int:
        n = table.num_rows
        if n:
            batch = pa.RecordBatch.from_arrays(
                [pa.repeat(self.lineage.file_id, n), table.column(ROW_NUMBER).combine_chunks(),
                 pa.repeat(self.run_id, n), table.column("row_text").combine_chunks(),
                 table.column("field_errors").combine_chunks()],
                schema=REJECTS_SCHEMA,
            )
            self.rejects_spool.write(self.reject_encoder.write_batch(batch))
        return n

    def _write_kept(self, table: pa.Table) -> None:
        if table.num_rows:
            batch = self.lineage.stg_batch(table)
            for part in _encode_slices(batch):
                self.write_stg(self.stg_encoder.write_batch(part))
            self.staged += table.num_rows

    def take(self, batch: pa.Table, block: TypedBlock, counts: DqCounts) -> None:
        """A typed block (typed_blocks): its rejects into the spool, its kept rows into stg's COPY (or held
        back), its dq counts added to the file's."""
        spec, engine = self.spec, self.engine
        self.counts.add(counts)
        self.rejected += self._write_rejects(block.rejects)
        kept = block.kept
        hold = np.zeros(kept.num_rows, dtype=bool)
        if self.repeated is not None and len(self.repeated) and kept.num_rows:
            key_columns = [kept.column(k).combine_chunks() for k in spec.natural_key]
            hold = np.isin(engine.key_hashes(key_columns), self.repeated)
        if hold.any():
            keep_idx = np.flatnonzero(block.keep)
            held_idx = pa.array(keep_idx[hold])
            texts = pc.binary_join_element_wise(
                *[pc.take(batch.column(c), held_idx).combine_chunks() for c in spec.column_names],
                ROW_TEXT_SEPARATOR,
            )
            self.held.append((kept.filter(pa.array(hold, pa.bool_())), texts,
                              [(v[hold], key) for v, key in block.kept_violations]))
            free = ~hold
            kept = kept.filter(pa.array(free, pa.bool_()))
            self._count_kept(kept, block.kept_violations, free)
        else:
            self._count_kept(kept, block.kept_violations, None)
        self._write_kept(kept)

    def end(self) -> None:
        """The held-back rows through the duplicate-key rule, then the end of both encodings."""
        if self.held:
            survivors, superseded_rows = _resolve(self.spec, self.held)
            for table, violations in survivors:
                if table.num_rows:
                    self._count_kept(table, violations, None)
                    self._write_kept(table)
            if superseded_rows.num_rows:
                self._write_rejects(superseded_rows)
                self.superseded = superseded_rows.num_rows
                self.counts.rule_violations[(None, "duplicate_key", "reject")] += self.superseded
            self.held = []
        self.write_stg(self.stg_encoder.finish())
        self.rejects_spool.write(self.reject_encoder.finish())
        self.rejects_spool.flush()

    def close(self) -> None:
        self.rejects_spool.close()


def _resolve(spec: ExtractSpec, held: list[tuple[pa.Table, pa.Array, list]]):
    """Among the held-back rows (kept rows whose key hash repeats): per exact typed key, the last row
    stays; the earlier ones are superseded by it. Returns ([(survivors, violations)], superseded rejects)."""
    tables = [t for t, _, _ in held]
    combined = pa.concat_tables(tables).combine_chunks()
    texts = pa.concat_arrays([t for _, t, _ in held])
    keys = list(spec.natural_key)
    last = combined.select([*keys, ROW_NUMBER]).group_by(keys).aggregate([(ROW_NUMBER, "max")])
    joined = combined.select([*keys, ROW_NUMBER]).append_column("i", pa.array(np.arange(combined.num_rows))).join(
        last, keys=keys, join_type="left outer"
    ).sort_by("i")
    last_row = joined.column(f"{ROW_NUMBER}_max").combine_chunks()
    is_last = pc.equal(combined.column(ROW_NUMBER).combine_chunks(), last_row)
    survivors = combined.filter(is_last)
    violations = []
    offset = 0
    is_last_np = np.asarray(is_last.to_numpy(zero_copy_only=False), dtype=bool)
    merged: dict = {}
    for table, _, vs in held:
        n = table.num_rows
        for v, key in vs:
            merged.setdefault(key, np.zeros(combined.num_rows, dtype=bool))[offset:offset + n] = v
        offset += n
    violations = [(v[is_last_np], key) for key, v in merged.items()]
    gone = pc.invert(is_last)
    gone_rows = pc.filter(combined.column(ROW_NUMBER).combine_chunks(), gone)
    gone_last = pc.filter(last_row, gone)
    key_list = json.dumps(keys)
    errors = pc.binary_join_element_wise(
        '[{"rule": "duplicate_key", "severity": "reject", "columns": ' + key_list + ', "superseded_by_row": ',
        pc.cast(gone_last, pa.string()), "}]", "",
    )
    superseded = pa.table({ROW_NUMBER: gone_rows, "row_text": pc.filter(texts, gone), "field_errors": errors})
    return [(survivors, violations)], superseded


# -- staging while landing ---------------------------------------------------------------------------
_ESCAPE_PLACEHOLDER = "\x00"  # never in a field: the Indici reader refuses a file holding NUL


def _unescape_copy_text(values: pa.Array) -> pa.Array:
    """COPY text-format escapes (`\\\\`, `\\t`, `\\n`, `\\r`: all that escape_copy_text writes) back to the
    characters. `\\\\` is replaced first, by a character no field holds, so `\\\\t` stays a backslash and a t."""
    out = pc.replace_substring(values, "\\\\", _ESCAPE_PLACEHOLDER)
    for escaped, char in (("\\t", "\t"), ("\\n", "\n"), ("\\r", "\r")):
        out = pc.replace_substring(out, escaped, char)
    return pc.replace_substring(out, _ESCAPE_PLACEHOLDER, "\\")


def copy_text_batch(data: bytes | bytearray, line_columns: list[str], spec: ExtractSpec,
                    end: int | None = None) -> pa.Table:
    """Complete COPY text lines (as raw landing sends them: the lineage columns, row_number, the fields)
    as the table the engine types: row_number and the fields, exactly the text raw stores. COPY text has
    no quoting and no raw tab or LF inside a value, so Arrow splits it on tabs and lines with quoting
    off; values holding an escape (rare) are unescaped. `end`: the lines are data[:end] (read in place)."""
    end = len(data) if end is None else end
    fields = spec.column_names
    types = {c: pa.string() for c in fields}
    types[ROW_NUMBER] = pa.int64()
    table = pacsv.read_csv(
        pa.py_buffer(data).slice(0, end),
        read_options=pacsv.ReadOptions(column_names=line_columns, block_size=CSV_BLOCK_BYTES, use_threads=False),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False,
                                         newlines_in_values=False, ignore_empty_lines=False),
        convert_options=pacsv.ConvertOptions(column_types=types, include_columns=[ROW_NUMBER, *fields],
                                             strings_can_be_null=False, check_utf8=False),
    )
    escaped = data.find(b"\\", 0, end) >= 0  # one scan of the block (a C memchr); an escape is rare
    columns = []
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if escaped and name != ROW_NUMBER and pc.any(pc.match_substring(column, "\\")).as_py():
            column = _unescape_copy_text(column)
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


def _copy_text_blocks(spool: io.BufferedIOBase, line_columns: list[str], spec: ExtractSpec,
                      read_bytes: int, start: int = 0) -> Iterator[Block]:
    """The spooled COPY text lines from byte `start` (a line's start) as blocks of about `read_bytes` (cut
    after a line: in COPY text an LF always ends a line). Each block is read into one new buffer, the
    previous block's unfinished line first, and parsed in place: slicing and concatenating bytes made two
    more copies of every block (4-7 MB of the typing's peak RSS at 8 MiB blocks)."""
    spool.seek(start)
    carry = b""
    while True:
        buf = bytearray(len(carry) + read_bytes)
        buf[: len(carry)] = carry
        read = spool.readinto(memoryview(buf)[len(carry):])
        if not read:
            break
        end = len(carry) + read
        cut = buf.rfind(b"\n", 0, end) + 1
        carry = bytes(buf[cut:end])  # a line longer than the block waits for the next read
        if cut:
            yield partial(copy_text_batch, buf, line_columns, spec, cut)
    if carry:
        raise ValueError("the landing's spool ends inside a line")
