"""The engine checks the columns of one type together (typing_engine/engine.py: _check_columns): their
values concatenated, checked once, the results sliced back. That must be exactly what checking each
column alone gives, for every value, including those that fail, are empty or are the no-date sentinel."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.registry import get as get_spec
from worker.pipeline.typing_engine.columns import check_column
from worker.pipeline.typing_engine.engine import ROW_NUMBER, TypingEngine

SPEC = get_spec("Appointments")
# Valid and invalid values of every contract type the extract uses, blanks and the sentinel among them.
VALUES = st.sampled_from([
    "", " ", "0", "1", "2", "-7", "+12", "12345678901234567890", "x", "1.5", "-0.25", "1e3", "abc",
    "2025-08-12", "2025-02-29", "2024-02-29", "1900-01-01", "1900-01-01 00:00:00", "2025-04-06 02:30:00",
    "2025-09-28 02:30:00", "2025-08-12 08:50:00.123", "2025-13-01 00:00:00", " 2025-08-12 08:50:00 ",
    "0a6f1c0e-57a2-4d5c-9e3b-1f2a3b4c5d6e", "0A6F1C0E-57A2-4D5C-9E3B-1F2A3B4C5D6E", "not-a-uuid", "Ōtāhuhu",
])


def _batch(rows: list[list[str]]) -> pa.Table:
    columns = {ROW_NUMBER: pa.array(range(1, len(rows) + 1), pa.int64())}
    for i, name in enumerate(SPEC.column_names):
        columns[name] = pa.array([r[i] for r in rows], pa.string())
    return pa.table(columns)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(VALUES, min_size=SPEC.field_count, max_size=SPEC.field_count), min_size=1, max_size=6))
def test_columns_checked_together_equal_columns_checked_alone(rows):
    engine = TypingEngine(SPEC, {})
    batch = _batch(rows)
    grouped = engine._check_columns(batch)
    assert any(len(names) > 1 for _, names in engine._groups)  # the grouping is exercised
    for col in SPEC.columns:
        alone = check_column(col.type, batch.column(col.column).combine_chunks())
        together = grouped[col.column]
        assert together.typed.equals(alone.typed), col.column
        assert together.v.equals(alone.v), col.column
        np.testing.assert_array_equal(together.present, alone.present, err_msg=col.column)
        np.testing.assert_array_equal(together.ok, alone.ok, err_msg=col.column)
        if alone.no_date is None:
            assert together.no_date is None
        else:
            np.testing.assert_array_equal(together.no_date, alone.no_date, err_msg=col.column)
