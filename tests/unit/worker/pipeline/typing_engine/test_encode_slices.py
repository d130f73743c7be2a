"""Kept rows are encoded for stg's binary COPY in slices (typing_engine/stage.py: _encode_slices), to keep
the encoder's buffers small. The COPY must receive exactly the bytes one encoding of the block gives."""

from __future__ import annotations

import pyarrow as pa
import pytest

from worker.pipeline.typing_engine import stage


def _batch(rows: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({
        "n": pa.array(range(rows), pa.int64()),
        "text": pa.array([None if i % 7 == 0 else "x" * (i % 50) for i in range(rows)], pa.string()),
        "at": pa.array([i * 1_000_000 for i in range(rows)], pa.timestamp("us", tz="UTC")),
    })


@pytest.mark.parametrize("rows", [1, 2, 999, 20_000])
def test_slices_cover_every_row_once_in_order(rows, monkeypatch):
    monkeypatch.setattr(stage, "ENCODE_BYTES", 4096)
    batch = _batch(rows)
    parts = list(stage._encode_slices(batch))
    assert sum(p.num_rows for p in parts) == rows
    assert pa.Table.from_batches(parts).equals(pa.Table.from_batches([batch]))
    if rows == 20_000:  # a batch larger than the slice size is cut
        assert len(parts) > 1


def test_a_block_encoded_in_slices_is_the_same_copy_stream(monkeypatch):
    monkeypatch.setattr(stage, "ENCODE_BYTES", 4096)
    batch = _batch(20_000)
    whole = stage._encoder(batch.schema, ())
    expected = whole.write_header() + whole.write_batch(batch) + whole.finish()
    sliced = stage._encoder(batch.schema, ())
    got = sliced.write_header() + b"".join(sliced.write_batch(p) for p in stage._encode_slices(batch)) + sliced.finish()
    assert got == expected


def test_an_empty_batch_has_no_slices():
    assert list(stage._encode_slices(_batch(0))) == []
