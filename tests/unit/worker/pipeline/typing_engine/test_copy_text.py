"""Staging while landing reads back the COPY text raw landing writes (typing_engine/stage.py:
copy_text_batch, _copy_text_blocks): every field must come back exactly as the file holds it, whatever it
contains, and however the spool is cut into blocks."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.registry import get as get_spec
from worker.io.indici_reader import IndiciReader, encode_rows
from worker.pipeline.land import LINEAGE_PREFIX_COLUMNS, copy_columns
from worker.pipeline.typing_engine.engine import ROW_NUMBER
from worker.pipeline.typing_engine.stage import _copy_text_blocks, block_bytes, copy_text_batch

SPEC = get_spec("Appointments")
# The constant lineage columns raw landing writes before the row number (escaped COPY text).
LINEAGE_VALUES = {"load_file_id": "7", "s3_bucket": "bucket", "s3_key": "key\\\\with\\\\backslash",
                  "s3_version_id": "v1", "file_hash": "h", "date_extracted": "2025-08-12 08:50:00", "extract_type": "F",
                  "file_per_org_id": "685146", "file_practice_id": "535", "load_run_id": "3",
                  "landed_at": "2025-08-12"}
PREFIX = "".join(LINEAGE_VALUES[c] + "\t" for c in LINEAGE_PREFIX_COLUMNS)
# What COPY text escapes, what looks like an escape or a NULL, the format's own characters and a macron.
ALPHABET = st.sampled_from(["a", "Z", "0", " ", "\\", "t", "n", "r", "N", "\t", "\n", "\r", '"', "'", ",", "|",
                            "^", "~", "ā", "\u2028", "."])


def _lines(rows: list[list[str]]) -> bytes:
    reader = IndiciReader([encode_rows(rows)], SPEC.field_count)
    return b"".join(reader.copy_bytes(PREFIX))


def _fields(table) -> list[list[str]]:
    columns = [table.column(c).to_pylist() for c in SPEC.column_names]
    return [list(r) for r in zip(*columns)]


field = st.text(ALPHABET, max_size=12)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(field, min_size=SPEC.field_count, max_size=SPEC.field_count), min_size=1, max_size=5))
def test_every_field_comes_back_as_the_file_holds_it(rows):
    try:
        data = _lines(rows)
    except ValueError:  # the format cannot hold these fields (separators at a field's edge): not a file
        return
    table = copy_text_batch(data, copy_columns(SPEC), SPEC)
    assert table.column_names == [ROW_NUMBER, *SPEC.column_names]
    assert table.column(ROW_NUMBER).to_pylist() == list(range(1, len(rows) + 1))
    assert _fields(table) == rows


def test_escapes_are_undone_once_and_only_where_written():
    rows = [["plain"] * SPEC.field_count, ["plain"] * SPEC.field_count]
    rows[1][:6] = ["\\t", "\\\\", "a\tb", "\\N", "end\\", "x\r\ny"]
    table = copy_text_batch(_lines(rows), copy_columns(SPEC), SPEC)
    assert _fields(table) == rows


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(field, min_size=SPEC.field_count, max_size=SPEC.field_count), min_size=1, max_size=6),
       st.integers(min_value=1, max_value=400))
def test_blocks_of_any_size_give_every_row_once_in_order(rows, read_bytes):
    """Blocks cut lines anywhere, and a line may be longer than a block (it waits for the next read)."""
    try:
        data = _lines(rows)
    except ValueError:
        return
    tables = [block() for block in _copy_text_blocks(io.BytesIO(data), copy_columns(SPEC), SPEC, read_bytes)]
    assert [r for t in tables for r in t.column(ROW_NUMBER).to_pylist()] == list(range(1, len(rows) + 1))
    assert [r for t in tables for r in _fields(t)] == rows
    if read_bytes >= len(data):
        assert len(tables) == 1


def test_a_spool_that_ends_inside_a_line_is_an_error():
    data = _lines([["x"] * SPEC.field_count] * 2)
    with pytest.raises(ValueError, match="ends inside a line"):
        list(_copy_text_blocks(io.BytesIO(data[:-1]), copy_columns(SPEC), SPEC, 64))


def test_a_wider_extract_types_larger_blocks_within_the_bounds():
    sizes = [block_bytes(get_spec(name)) for name in ("Medicine", "Appointments", "Providers", "Patients")]
    assert sizes == sorted(sizes)
    assert sizes[0] == sizes[1] == 4 << 20  # the floor
    assert sizes[1] < sizes[2] < sizes[3] == 8 << 20  # wider rows, larger blocks, up to the ceiling
