"""Typing while the raw COPY runs (typing_engine/tee.py, TYPING_DURING_RAW_COPY): the blocks typed ahead,
wherever the landing stopped them, plus the rest typed after, must give stg and the rejects table the
same bytes, and the dq the same counts, as typing the whole file after raw; the thread must stop
promptly, however far the feeding got, and a failure there must be reported, not lost."""

from __future__ import annotations

import io
import tempfile
import time

import pytest

from tests.unit.worker.pipeline.typing_engine.helpers import (
    COLUMNS,
    RECORD,
    SPEC,
    faulty_copy_text,
    finished,
    type_file,
)
from worker.pipeline.typing_engine import stage, tee
from worker.pipeline.typing_engine.engine import TypingEngine

BLOCK = 64 << 10  # many blocks


@pytest.fixture(scope="module")
def copy_text() -> bytes:
    return faulty_copy_text()


def _lines(text: bytes, size: int) -> list[bytes]:
    """The text in pieces of complete lines of about `size` bytes (how raw landing feeds the tee)."""
    pieces, start = [], 0
    while start < len(text):
        end = text.find(b"\n", min(start + size, len(text)) - 1) + 1 or len(text)
        pieces.append(text[start:end])
        start = end
    return pieces


def _wait_for(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the typing ahead did not get there"
        time.sleep(0.01)


def _typed_with_ahead(text: bytes, fed_bytes: int, threads: int = 1, piece: int = 20_000, block: int = BLOCK):
    """Feed the first `fed_bytes` (in line pieces), let the thread type all the whole blocks of it, stop
    it, write the rest, and finish the pass as StagingTee.load does. Returns the output and where the
    rest began."""
    engine = TypingEngine(SPEC, {})
    spool = tempfile.TemporaryFile()
    ahead = tee._TypingAhead(spool.fileno(), SPEC, RECORD, engine, COLUMNS, block)
    pieces = _lines(text, piece)
    written = 0
    while pieces and written < fed_bytes:
        data = pieces.pop(0)
        spool.write(data)
        spool.flush()
        written += len(data)
        ahead.fed(written)
    # every whole block fed is typed before the stop (the thread never types a partial block)
    _wait_for(lambda: written - ahead.typed_upto < block or ahead.error is not None)
    ahead.stop()
    assert ahead.error is None
    for data in pieces:
        spool.write(data)
    spool.flush()
    stg = io.BytesIO()
    typed = stage.TypedAhead(ahead.rows, ahead.stg)
    blocks = stage._copy_text_blocks(spool, COLUMNS, SPEC, block, ahead.typed_upto)
    stage.type_blocks_into(typed.rows, blocks, engine, threads, typed, stg.write)
    out = finished(typed.rows, stg)
    ahead.stg.close()
    spool.close()
    return out, ahead.typed_upto


@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("threads", [1, 2])
def test_typed_ahead_and_after_gives_the_bytes_and_counts_of_typing_after(copy_text, share, threads):
    stg, rejects, plain = type_file(copy_text, threads, BLOCK)
    (stg_a, rejects_a, rows_a), upto = _typed_with_ahead(copy_text, int(len(copy_text) * share), threads)
    assert plain.rejected > 0 and plain.counts.domain_values  # the file has rejects and nullified values
    if share:
        assert upto > 0  # some blocks were typed ahead
    if share == 1.0:
        assert upto > len(copy_text) - 2 * BLOCK  # nearly all of it
    assert stg_a == stg
    assert rejects_a == rejects
    assert (rows_a.staged, rows_a.rejected) == (plain.staged, plain.rejected)
    assert rows_a.counts == plain.counts


def test_lines_longer_than_a_block_are_typed_whole(copy_text):
    text = copy_text[: 40 * 1024]
    text = text[: text.rfind(b"\n") + 1]
    stg, rejects, plain = type_file(text, 1, 256)
    (stg_a, rejects_a, _), upto = _typed_with_ahead(text, len(text), piece=3000, block=256)
    assert upto == len(text)  # every line, each longer than a block, was typed ahead
    assert (stg_a, rejects_a) == (stg, rejects)


def test_stop_returns_promptly_when_nothing_was_fed_and_twice():
    spool = tempfile.TemporaryFile()
    ahead = tee._TypingAhead(spool.fileno(), SPEC, RECORD, TypingEngine(SPEC, {}), COLUMNS, BLOCK)
    started = time.monotonic()
    ahead.stop()
    ahead.stop()
    assert time.monotonic() - started < 5
    assert ahead.typed_upto == 0 and ahead.error is None
    ahead.close()
    spool.close()


def test_a_failure_while_typing_ahead_is_kept_and_ends_the_thread(copy_text):
    class Failing(TypingEngine):
        def type_block(self, batch, counts):
            raise ValueError("broken block")

    spool = tempfile.TemporaryFile()
    ahead = tee._TypingAhead(spool.fileno(), SPEC, RECORD, Failing(SPEC, {}), COLUMNS, BLOCK)
    spool.write(copy_text)
    spool.flush()
    ahead.fed(len(copy_text))
    _wait_for(lambda: ahead.error is not None)
    ahead.stop()
    assert isinstance(ahead.error, ValueError) and ahead.typed_upto == 0
    ahead.close()
    spool.close()
