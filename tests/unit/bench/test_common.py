"""bench/common.py's stand-in reader and plain COPY text (the benchmark's fallback inputs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.common import plain_rows, write_plain_copy_text
from worker.synth.writer import encode_rows

ROWS = [["1", "a\tb", "Ōtāhuhu"], ["2", "", "line\r\nbreak \\ back"], ["3", "x", "y"]]


class _Spec:
    field_count = 3


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 20])  # odd sizes split UTF-16 code units and separators
def test_plain_rows_gives_the_rows_whatever_the_chunk_size(tmp_path: Path, chunk: int) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(encode_rows(ROWS))
    assert list(plain_rows(path, 3, chunk=chunk)) == ROWS


def test_plain_rows_names_the_row_with_the_wrong_field_count(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(encode_rows([["1", "a", "b"], ["2", "only"]]))
    with pytest.raises(ValueError, match="f.csv: row 2 has 2 fields, not 3"):
        list(plain_rows(path, 3))


def test_plain_copy_text_numbers_the_rows_and_escapes_for_copy(tmp_path: Path) -> None:
    path, out = tmp_path / "f.csv", tmp_path / "copy.txt"
    path.write_bytes(encode_rows(ROWS))
    written = write_plain_copy_text(_Spec(), path, out)
    assert written == out.stat().st_size
    assert out.read_text(encoding="utf-8").splitlines() == [
        "1\t1\ta\\tb\tŌtāhuhu",
        "2\t2\t\tline\\r\\nbreak \\\\ back",
        "3\t3\tx\ty",
    ]
