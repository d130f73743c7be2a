"""Staging while landing: a file typed in the pass that lands it, from raw landing's own COPY text.

The landing hands each block of COPY text it sends to raw to the tee (`StagingTee.feed`), which keeps
it in a local spool; once raw is written, `load` types the spooled lines into stg and the rejects table
on the same connection and transaction, as stage_rows (stage.py) would from raw.

The typing starts while the raw COPY runs (`ahead`): a thread of its own (_TypingAhead) types the spool's
blocks as they arrive and keeps their stg COPY bytes in a second spool. During the raw COPY the
backend is one core's work and the reader's decoding less than the other's, so the typing takes the
idle time. When the raw COPY ends the thread stops after its block; `load` sends the bytes typed ahead
into stg's COPY (from a thread) while the rest of the file is typed, then the rest, in file order: stg
receives the same bytes as when the whole file is typed after raw. Should the typing ahead fail, or a
natural key repeat (the second pass), the file is typed again from the spool, as without it.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
from collections.abc import Iterator

import psycopg

from contracts.model import ExtractSpec
from worker.pipeline.typing_engine.engine import DqCounts, TypingEngine
from worker.pipeline.typing_engine.stage import (
    Block,
    EngineResult,
    TypedAhead,
    _copy_text_blocks,
    _Laps,
    _pass,
    _second_pass,
    _TypedRows,
    block_bytes,
    copy_text_batch,
    mapped_domains,
)

__all__ = ["StagingTee"]


class _TypingAhead:
    """Types the tee spool's lines, in blocks of `block` bytes cut after a line, on a thread of its own,
    as far as they have been fed; the kept rows' stg COPY bytes go to a spool, the rejects to the rows'
    own spool. `stop` ends it after the block in hand: `typed_upto` is then where the rest begins."""

    def __init__(self, spool_fd: int, spec: ExtractSpec, record, engine: TypingEngine, line_columns: list[str],
                 block: int) -> None:
        self._fd, self._spec, self._engine, self._columns, self._block = spool_fd, spec, engine, line_columns, block
        self._changed = threading.Condition()
        self._fed = 0  # bytes of complete lines in the tee spool (written by feed's thread)
        self._stopping = False
        self.typed_upto = 0  # bytes of the tee spool typed (written by the thread only)
        self.error: BaseException | None = None
        self.stg: io.BufferedRandom = tempfile.TemporaryFile(prefix="indici-stg-ahead-")
        self.rows = _TypedRows(spec, record, engine, None, self.stg.write)
        self._thread = threading.Thread(target=self._run, name="indici-typing-ahead", daemon=True)
        self._thread.start()

    def fed(self, total: int) -> None:
        """The tee spool now holds `total` bytes of complete lines (flushed)."""
        with self._changed:
            self._fed = total
            self._changed.notify()

    def stop(self) -> None:
        """Stop after the block in hand and wait for it (idempotent)."""
        with self._changed:
            self._stopping = True
            self._changed.notify()
        self._thread.join()

    def _next(self) -> tuple[bytes, int] | None:
        """The next block's bytes and the length of its complete lines; None once stopped. A block is
        typed only once it is whole, so the blocks are those the pass would type."""
        with self._changed:
            while not self._stopping and self._fed - self.typed_upto < self._block:
                self._changed.wait()
            if self._stopping:
                return None
            fed = self._fed
        data = os.pread(self._fd, self._block, self.typed_upto)
        cut = data.rfind(b"\n") + 1
        if not cut:  # a line longer than a block: up to what was fed, which ends a line
            data = os.pread(self._fd, fed - self.typed_upto, self.typed_upto)
            cut = len(data)
        return data, cut

    def _run(self) -> None:
        try:
            while (item := self._next()) is not None:
                data, cut = item
                batch = copy_text_batch(data, self._columns, self._spec, cut)
                counts = DqCounts()
                self.rows.take(batch, self._engine.type_block(batch, counts), counts)
                self.typed_upto += cut
        except BaseException as exc:  # the load types the whole file again, and meets the error itself
            self.error = exc

    def close(self) -> None:
        self.stop()
        self.rows.close()
        self.stg.close()


class StagingTee:
    """Stage a file in the pass that lands it, without reading raw back (the module's docstring): `feed`
    each block of COPY text sent to raw, then `load` once raw is written. A repeated natural key takes
    the second pass; `ahead` types while the raw COPY runs."""

    def __init__(self, conn: psycopg.Connection, spec: ExtractSpec, record, line_columns: list[str],
                 threads: int = 1, ahead: bool = True) -> None:
        self.spec, self.record, self.line_columns, self.threads = spec, record, line_columns, threads
        self.engine = TypingEngine(spec, mapped_domains(conn, spec))  # UnsupportedContract: no tee
        self.error: BaseException | None = None
        self._spool: io.BufferedRandom | None = tempfile.TemporaryFile(prefix="indici-land-")
        self._written = 0
        self._rows_ahead = 0
        self._ahead: _TypingAhead | None = None
        if ahead:
            self._ahead = _TypingAhead(self._spool.fileno(), spec, record, self.engine, line_columns,
                                       block_bytes(spec, threads))

    def feed(self, block: bytes) -> None:
        """One block of complete COPY lines, as raw landing sent it."""
        if self._spool is None:
            return
        try:
            self._spool.write(block)
            if self._ahead is not None:
                self._spool.flush()  # the typing ahead reads the file itself
        except OSError as exc:  # a full disk: the landing goes on, the stage step reads raw
            self.abandon(exc)
            return
        self._written += len(block)
        if self._ahead is not None:
            self._ahead.fed(self._written)

    def abandon(self, exc: BaseException) -> None:
        """Stop (the file is then staged from raw); frees the spools."""
        self.error = self.error or exc
        self._close_ahead()
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def _close_ahead(self) -> None:
        if self._ahead is not None:
            self._ahead.close()
            self._ahead = None

    @property
    def usable(self) -> bool:
        return self._spool is not None

    def _typed_ahead(self) -> tuple[TypedAhead | None, int]:
        """Stop the typing ahead; what it typed (None if nothing, or if it failed) and where the rest
        of the spool begins."""
        ahead = self._ahead
        if ahead is None:
            return None, 0
        ahead.stop()
        if ahead.error is not None or ahead.typed_upto == 0:
            return None, 0
        self._ahead = None  # handed over: the pass owns its rows, load closes its spool
        self._rows_ahead = ahead.rows.staged + ahead.rows.rejected
        return TypedAhead(ahead.rows, ahead.stg), ahead.typed_upto

    def load(self, conn: psycopg.Connection) -> EngineResult:
        """Type the spooled lines into stg and etl.rejects_<t> (the caller's transaction, after raw's COPY)."""
        if self._spool is None:
            raise RuntimeError(f"the landing's spool was lost: {self.error!r}")
        spool = self._spool
        spool.flush()
        laps = _Laps()
        lap = laps.lap
        block = block_bytes(self.spec, self.threads)

        def blocks(start: int = 0) -> Iterator[Block]:
            return _copy_text_blocks(spool, self.line_columns, self.spec, block, start)

        typed, start = self._typed_ahead()
        self._close_ahead()
        lap("ahead_stop")
        first_pass = True
        try:
            try:
                with conn.transaction():
                    result = _pass(conn, self.spec, self.record, self.engine, blocks(start), None, lap,
                                   self.threads, typed)
            except psycopg.errors.UniqueViolation:  # the rows typed ahead were rolled back with the pass
                first_pass = False
                result = _second_pass(conn, self.spec, self.record, self.engine, blocks, lap, self.threads)
        finally:
            if typed is not None:
                typed.close()
            self.abandon(RuntimeError("loaded"))
        result.seconds = laps.seconds
        if typed is not None and first_pass:
            result.rows_typed_ahead = self._rows_ahead
        return result
