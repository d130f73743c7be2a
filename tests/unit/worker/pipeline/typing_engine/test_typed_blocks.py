"""Blocks are parsed and typed on several threads (typing_engine/stage.py: typed_blocks, TYPING_THREADS).
What stg and the rejects table receive, and the dq counts, must not depend on how many threads typed the
file; the blocks come back in order, only a bounded number are in memory, and an error surfaces."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pyarrow as pa
import pytest

from contracts.registry import get as get_spec
from tests.unit.worker.pipeline.typing_engine.helpers import faulty_copy_text, type_file
from worker.pipeline.typing_engine import stage
from worker.pipeline.typing_engine.engine import DqCounts


@pytest.fixture(scope="module")
def copy_text() -> bytes:
    return faulty_copy_text()


def test_threads_give_the_same_stg_rows_rejects_and_counts(copy_text):
    read_bytes = 64 << 10  # many blocks, so several are typed at once
    assert len(copy_text) > 8 * read_bytes
    stg1, rejects1, one = type_file(copy_text, 1, read_bytes)
    stg3, rejects3, three = type_file(copy_text, 3, read_bytes)
    # The file exercises what a block's counts carry: rejects, nullified values, domain values seen.
    assert one.rejected > 0 and one.staged > 0
    assert sum(one.counts.rule_violations.values()) > one.rejected
    assert one.counts.domain_values
    assert stg3 == stg1
    assert rejects3 == rejects1
    assert (three.staged, three.rejected) == (one.staged, one.rejected)
    assert three.counts == one.counts


class _Engine:
    """Types a block by recording it; `fail_at` raises for that block."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at

    def type_block(self, batch: pa.Table, counts: DqCounts):
        n = batch.column("n")[0].as_py()
        if n == self.fail_at:
            raise ValueError(f"block {n} does not type")
        counts.empty["n"] += n
        return n


class _Blocks:
    """Blocks that count how many were parsed and not yet taken by the caller."""

    def __init__(self, count: int, pause: float = 0.0) -> None:
        self.count, self.pause = count, pause
        self.started = self.taken = self.most_ahead = 0
        self.lock = threading.Lock()

    def block(self, n: int):
        def parse() -> pa.Table:
            with self.lock:
                self.started += 1
                self.most_ahead = max(self.most_ahead, self.started - self.taken)
            time.sleep(self.pause)
            return pa.table({"n": [n]})
        return parse

    def __iter__(self):
        return (self.block(n) for n in range(self.count))


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_blocks_come_back_in_order_with_a_bounded_number_ahead(threads):
    blocks = _Blocks(40, pause=0.002)
    got = []
    for batch, typed, counts in stage.typed_blocks(blocks, _Engine(), threads):
        assert batch.column("n")[0].as_py() == typed
        assert counts.empty == Counter({"n": typed})  # each block's own counts
        got.append(typed)
        with blocks.lock:
            blocks.taken += 1
        time.sleep(0.004)  # a slow caller: the pool runs ahead as far as it may
    assert got == list(range(40))
    assert blocks.most_ahead <= threads + 1
    if threads > 1:
        assert blocks.most_ahead > 1  # blocks were typed ahead of the caller


def test_a_block_that_fails_raises_in_its_turn_after_the_blocks_before_it():
    got = []
    with pytest.raises(ValueError, match="block 5 does not type"):
        for _, typed, _ in stage.typed_blocks(_Blocks(30), _Engine(fail_at=5), 2):
            got.append(typed)
    assert got == [0, 1, 2, 3, 4]


def test_closing_early_cancels_the_blocks_not_started():
    blocks = _Blocks(200, pause=0.01)
    typed = stage.typed_blocks(blocks, _Engine(), 2)
    next(typed)
    typed.close()
    started = blocks.started
    time.sleep(0.05)
    assert blocks.started == started  # nothing runs after close
    assert started <= 4


def test_counts_of_blocks_add_up():
    a, b = DqCounts(), DqCounts()
    a.rule_violations[("x", "type", "nullify")] += 2
    b.rule_violations[("x", "type", "nullify")] += 3
    b.empty["k"] += 1
    a.domain_values["c"] = {"A"}
    b.domain_values["c"] = {"B"}
    b.domain_values["d"] = {"Z"}
    a.unmapped_rows, b.unmapped_rows = 1, 4
    a.add(b)
    assert a.rule_violations == Counter({("x", "type", "nullify"): 5})
    assert a.empty == Counter({"k": 1})
    assert a.domain_values == {"c": {"A", "B"}, "d": {"Z"}}
    assert a.unmapped_rows == 5


@pytest.mark.parametrize("name", ["Medicine", "Appointments", "Patients"])
@pytest.mark.parametrize("threads", [2, 3, 8])
def test_blocks_in_memory_stay_within_the_budget(name, threads):
    spec = get_spec(name)
    assert (threads + 1) * stage.block_bytes(spec, threads) <= max(stage.IN_FLIGHT_BYTES, (threads + 1) << 20)
    assert stage.block_bytes(spec, threads) <= stage.block_bytes(spec, 1)
