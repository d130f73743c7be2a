"""Staging while landing reads back the COPY text raw landing writes (typing_engine/stage.py:
copy_text_batch): every field must come back exactly as the file holds it, whatever it contains."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.registry import get as get_spec
from worker.io.indici_reader import IndiciReader, encode_rows
from worker.pipeline.land import LINEAGE_PREFIX_COLUMNS, copy_columns
from worker.pipeline.typing_engine.engine import ROW_NUMBER
from worker.pipeline.typing_engine.stage import copy_text_batch

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
