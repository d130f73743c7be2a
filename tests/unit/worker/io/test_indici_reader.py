"""Tests of the streaming Indici reader (worker/io/indici_reader.py).

The reference implementations here (naive decode/split, a character-by-character COPY escaper and
un-escaper) are written independently of the reader on purpose.
"""
from __future__ import annotations

import codecs
import hashlib
import pickle
import random
from pathlib import Path

import pytest

from worker.io.indici_reader import (
    IndiciFormatError,
    IndiciReader,
    detect_encoding,
    encode_rows,
    iter_file_chunks,
)

FIXTURE = (
    Path(__file__).resolve().parents[3]
    / "fixtures" / "indici" / "685146_535_Patients_202508180544_202508190544_2508190850.csv"
)
S = "|^^|"
T = "|~~|"

TRICKY = [
    "plain",
    "",
    "a,b,c",
    "tab\there",
    "crlf\r\nnext line",
    "lf\nonly",
    "cr\ronly",
    "back\\slash",
    "ends with backslash\\",
    "\\",
    "\\N",
    "\\\\N",
    "\\t not a tab",
    '"quoted", "more"',
    "it's",
    "0653",
    "0000001391840244",
    "+6421458796",
    " Registered ",
    "  ",
    "00-04",
    "PO Box 123",
    "2025-01-29 18:18:11.347",
    "-36.882534999999997",
    ".00",
    "Ōtāhuhu Māori",
    "emoji 😀 outside the BMP",
    "a|b",
    "x^y~z",
    "%d %s {0} %%",
    "\t",
    "\r\n",
    "\n\n",
]


# ---------------------------------------------------------------- independent references
def naive_rows(data: bytes, encoding: str, bom_len: int = 0) -> list[list[str]]:
    text = data[bom_len:].decode(encoding)
    parts = text.split(T)
    assert parts[-1].strip(" \t\r\n") == ""
    return [p.split(S) for p in parts[:-1]]


def copy_escape_reference(value: str) -> str:
    """COPY text-format escaping, character by character."""
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        else:
            out.append(ch)
    return "".join(out)


_SIMPLE_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def copy_unescape_line(line: str) -> list[str | None]:
    """Parse one COPY text-format line (without its newline) per the Postgres rules; None is NULL."""
    fields: list[str | None] = []
    cur: list[str] = []
    raw: list[str] = []  # the field as written, to recognise \N
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\t":
            fields.append(None if "".join(raw) == "\\N" else "".join(cur))
            cur, raw = [], []
            i += 1
            continue
        if ch == "\\":
            assert i + 1 < len(line), "dangling backslash at end of line"
            nxt = line[i + 1]
            raw.append(line[i:i + 2])
            if nxt in _SIMPLE_ESCAPES:
                cur.append(_SIMPLE_ESCAPES[nxt])
                i += 2
            elif nxt in "01234567":
                j = i + 1
                while j < len(line) and j < i + 4 and line[j] in "01234567":
                    j += 1
                cur.append(chr(int(line[i + 1:j], 8)))
                raw.append(line[i + 2:j])
                i = j
            elif nxt == "x":
                j = i + 2
                while j < len(line) and j < i + 4 and line[j] in "0123456789abcdefABCDEF":
                    j += 1
                cur.append(chr(int(line[i + 2:j], 16)))
                raw.append(line[i + 2:j])
                i = j
            else:  # '\\', and any other character stands for itself ('\N' handled via raw)
                cur.append(nxt)
                i += 2
            continue
        assert ch not in "\r\n", "raw CR/LF inside a COPY line"
        cur.append(ch)
        raw.append(ch)
        i += 1
    fields.append(None if "".join(raw) == "\\N" else "".join(cur))
    return fields


def parse_copy(data: str, prefix_fields: int) -> list[tuple[list[str | None], int, list[str | None]]]:
    assert data == "" or data.endswith("\n")
    out = []
    for line in data.split("\n")[:-1]:
        fields = copy_unescape_line(line)
        out.append((fields[:prefix_fields], int(fields[prefix_fields]), fields[prefix_fields + 1:]))
    return out


def expected_copy(rows, prefix: str) -> str:
    return "".join(
        f"{prefix}{n}\t" + "\t".join(copy_escape_reference(v) for v in r) + "\n"
        for n, r in enumerate(rows, 1)
    )


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def read_rows(data: bytes, fc: int, size: int | None = None, **kw) -> tuple[list[list[str]], IndiciReader]:
    r = IndiciReader(pieces(data, size) if size else [data], fc, **kw)
    return list(r.rows()), r


def read_copy(data: bytes, fc: int, prefix: str = "", size: int | None = None, **kw) -> tuple[str, IndiciReader]:
    r = IndiciReader(pieces(data, size) if size else [data], fc, **kw)
    blocks = list(r.copy_blocks(prefix))
    assert all(b.endswith("\n") for b in blocks)
    return "".join(blocks), r


def tricky_rows(fc: int = 5, n: int = 12) -> list[list[str]]:
    rows = []
    k = 0
    for i in range(n):
        row = []
        for _ in range(fc):
            row.append(TRICKY[k % len(TRICKY)])
            k += 1
        row[0] = str(i + 1)
        rows.append(row)
    return rows


def raises_kind(fn, kind: str) -> IndiciFormatError:
    with pytest.raises(IndiciFormatError) as ei:
        fn()
    assert ei.value.kind == kind, (ei.value.kind, ei.value.detail)
    assert isinstance(ei.value, ValueError)
    return ei.value


# ---------------------------------------------------------------- the published sample
def test_fixture_is_byte_copy_of_published_sample():
    shared = Path("/work/shared/indici/samples") / FIXTURE.name
    if shared.exists():
        assert FIXTURE.read_bytes() == shared.read_bytes()


def test_sample_reads_two_rows_of_220_fields_like_a_naive_split():
    data = FIXTURE.read_bytes()
    reader = IndiciReader(iter_file_chunks(FIXTURE), 220)
    rows = list(reader.rows())
    assert rows == naive_rows(data, "utf-16-le")
    assert len(rows) == 2 and [len(r) for r in rows] == [220, 220]
    assert rows[0][0] == "9545417" and rows[0][1] == "ZZZ0121"
    assert "+6421458796" in rows[0]
    assert reader.encoding == "utf-16-le" and reader.bom is False
    assert reader.rows_read == 2
    assert reader.bytes_read == len(data)
    assert reader.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", [1, 3, 7, 4096])
def test_sample_copy_blocks_chunked(size):
    data = FIXTURE.read_bytes()
    expected = naive_rows(data, "utf-16-le")
    out, reader = read_copy(data, 220, prefix="17\t", size=size)
    assert out == expected_copy(expected, "17\t")
    parsed = parse_copy(out, 1)
    assert [p[0] for p in parsed] == [["17"], ["17"]]
    assert [p[1] for p in parsed] == [1, 2]
    assert [p[2] for p in parsed] == expected
    assert reader.sha256 == hashlib.sha256(data).hexdigest()


def test_sample_wrong_field_count_names_both_counts():
    e = raises_kind(lambda: read_rows(FIXTURE.read_bytes(), 219), "field_count")
    assert e.row_number == 1 and e.expected == 219 and e.found == 220
    assert "row 1" in e.detail and "219" in e.detail and "220" in e.detail


# ---------------------------------------------------------------- encodings
@pytest.mark.parametrize(
    "head,expected",
    [
        (b"", ("utf-8", 0)),
        (b"\xef\xbb\xbf1|^^|", ("utf-8", 3)),
        (b"\xff\xfe1\x00|\x00", ("utf-16-le", 2)),
        (b"\xfe\xff\x001\x00|", ("utf-16-be", 2)),
        ("9545417|^^|ZZZ0121".encode("utf-16-le"), ("utf-16-le", 0)),
        ("9545417|^^|ZZZ0121".encode("utf-8"), ("utf-8", 0)),
        ("Ōtāhuhu|^^|x".encode("utf-8"), ("utf-8", 0)),
        ("\r\n".encode("utf-16-le"), ("utf-16-le", 0)),
        (b"a" * 101 + b"\x00" + b"b" * 100, ("utf-8", 0)),  # a stray NUL (odd offset) keeps UTF-8 UTF-8
    ],
)
def test_detect_encoding(head, expected):
    assert detect_encoding(head) == expected


@pytest.mark.parametrize(
    "encoding,bom",
    [("utf-16-le", False), ("utf-16-le", True), ("utf-8", False), ("utf-8", True), ("utf-16-be", True)],
)
@pytest.mark.parametrize("size", [None, 1, 3, 7])
def test_round_trip_rows(encoding, bom, size):
    rows = tricky_rows()
    data = encode_rows(rows, encoding, bom=bom)
    got, reader = read_rows(data, 5, size)
    assert got == rows
    assert reader.encoding == encoding and reader.bom is bom
    assert reader.rows_read == len(rows)
    assert reader.bytes_read == len(data)
    assert reader.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    "encoding,bom", [("utf-16-le", False), ("utf-16-le", True), ("utf-8", False), ("utf-8", True)]
)
@pytest.mark.parametrize("size", [None, 1, 3, 7])
def test_round_trip_copy(encoding, bom, size):
    rows = tricky_rows()
    data = encode_rows(rows, encoding, bom=bom)
    out, reader = read_copy(data, 5, prefix="9\tx\t", size=size)
    assert out == expected_copy(rows, "9\tx\t")
    parsed = parse_copy(out, 2)
    assert [p[0] for p in parsed] == [["9", "x"]] * len(rows)
    assert [p[1] for p in parsed] == list(range(1, len(rows) + 1))
    assert [p[2] for p in parsed] == rows  # no NULL anywhere, every value exact
    assert reader.encoding == encoding and reader.bom is bom
    assert reader.sha256 == hashlib.sha256(data).hexdigest()


def test_encode_rows_bom_bytes():
    assert encode_rows([["a"]], "utf-16-le", bom=True) == b"\xff\xfea\x00|\x00~\x00~\x00|\x00"
    assert encode_rows([["a"]], "utf-8", bom=True) == b"\xef\xbb\xbfa|~~|"
    assert encode_rows([], "utf-8") == b""
    with pytest.raises(ValueError):
        encode_rows([["a|^^|b"]])
    with pytest.raises(ValueError):
        encode_rows([["a|~~|b"]])
    with pytest.raises(ValueError):
        encode_rows([["a|^^", "b"]])  # would read back as ['a', '^^|b']


# ---------------------------------------------------------------- COPY escaping, exactly
def test_copy_escaping_exact_strings():
    rows = [["a\tb", "c\\N", "x\r\ny", ""], ["\\N", "", " 0653 ", "\\"]]
    out, _ = read_copy(encode_rows(rows), 4, prefix="7\t")
    assert out == (
        "7\t1\ta\\tb\tc\\\\N\tx\\r\\ny\t\n"
        "7\t2\t\\\\N\t\t 0653 \t\\\\\n"
    )
    # empty prefix
    out, _ = read_copy(encode_rows([["1", ""]]), 2)
    assert out == "1\t1\t\n"


def test_copy_output_has_only_the_four_escapes_and_never_null():
    rows = tricky_rows(fc=7, n=40)
    out, _ = read_copy(encode_rows(rows), 7, prefix="p\t")
    for line in out.split("\n")[:-1]:
        i = 0
        while i < len(line):
            if line[i] == "\\":
                assert line[i + 1] in "\\tnr", line[i:i + 2]
                i += 2
            else:
                i += 1
        assert "\r" not in line
    for _, _, fields in parse_copy(out, 1):
        assert None not in fields


def test_copy_bytes_equals_copy_blocks_utf8():
    rows = tricky_rows(fc=6, n=30)
    data = encode_rows(rows)
    a = b"".join(IndiciReader(pieces(data, 5), 6, chunk_chars=8).copy_bytes("1\t"))
    b, _ = read_copy(data, 6, prefix="1\t")
    assert a == b.encode("utf-8")
    assert a.decode("utf-8") == expected_copy(rows, "1\t")


def test_prefix_with_percent_and_braces_is_literal():
    out, _ = read_copy(encode_rows([["a"]]), 1, prefix="%d{0}%s\t")
    assert out == "%d{0}%s\t1\ta\n"


# ---------------------------------------------------------------- chunk boundaries
@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-8"])
@pytest.mark.parametrize("bom", [False, True])
def test_chunk_boundaries_give_identical_results(encoding, bom):
    rows = tricky_rows(fc=4, n=25)
    data = encode_rows(rows, encoding, bom=bom) + " \r\n".encode(encoding)
    digest = hashlib.sha256(data).hexdigest()
    results = []
    for size in (1, 3, 7, len(data)):
        for chunk_chars in (1, 5, 1 << 20):
            got, r = read_rows(data, 4, size, chunk_chars=chunk_chars)
            out, c = read_copy(data, 4, "5\t", size, chunk_chars=chunk_chars)
            assert r.sha256 == c.sha256 == digest
            assert r.bytes_read == c.bytes_read == len(data)
            assert r.rows_read == c.rows_read == len(rows)
            results.append((got, out))
    assert all(res == results[0] for res in results)
    assert results[0][0] == rows
    assert results[0][1] == expected_copy(rows, "5\t")


def test_random_chunking_against_naive_reference():
    rnd = random.Random(20250819)
    alphabet = ["a", "Z", "0", " ", "|", "^", "~", "\\", "\t", "\r", "\n", '"', ",", "ā", "😀", "N"]
    for trial in range(60):
        fc = rnd.randint(1, 6)
        rows = []
        while len(rows) < rnd.randint(0, 12):
            row = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 6))) for _ in range(fc)]
            try:
                encode_rows([row])
            except ValueError:
                continue  # not representable (separator-like edges): skip
            rows.append(row)
        try:
            encode_rows(rows)
        except ValueError:
            continue  # a row ending in '|' next to the following row's '~~|' etc.
        encoding = rnd.choice(["utf-16-le", "utf-8"])
        data = encode_rows(rows, encoding, bom=rnd.random() < 0.5)
        bounds = sorted(rnd.sample(range(1, len(data)), min(len(data) - 1, rnd.randint(0, 20)))) if len(data) > 1 else []
        chunks = [data[a:b] for a, b in zip([0] + bounds, bounds + [len(data)])]
        chunk_chars = rnd.choice([1, 2, 7, 64, 1 << 20])
        r = IndiciReader(chunks, fc, chunk_chars=chunk_chars)
        assert list(r.rows()) == rows, (trial, rows)
        assert r.sha256 == hashlib.sha256(data).hexdigest()
        c = IndiciReader(chunks, fc, chunk_chars=chunk_chars)
        assert "".join(c.copy_blocks("")) == expected_copy(rows, ""), (trial, rows)


def test_separator_split_across_chunks_with_long_rows():
    # rows longer than a chunk exercise the carried partial row (and its tail probe for '|~~|')
    rows = [["x" * 50, "y" * 30], ["z" * 70, ""], ["", "w" * 45]]
    data = encode_rows(rows)
    for size in (1, 2, 3, 5, 49, 100):
        for chunk_chars in (4, 16, 33):
            got, _ = read_rows(data, 2, size, chunk_chars=chunk_chars)
            assert got == rows
            out, _ = read_copy(data, 2, "", size, chunk_chars=chunk_chars)
            assert out == expected_copy(rows, "")


# ---------------------------------------------------------------- empty and whitespace-only files
@pytest.mark.parametrize("data", [b"", "  \r\n\t".encode("utf-16-le"), b"\r\n", b"\xff\xfe", b"\xef\xbb\xbf \n"])
def test_zero_row_files_are_valid(data):
    got, r = read_rows(data, 3)
    assert got == [] and r.rows_read == 0
    assert r.sha256 == hashlib.sha256(data).hexdigest()
    out, c = read_copy(data, 3, size=1)
    assert out == "" and c.rows_read == 0


def test_empty_file_encoding_is_reported():
    _, r = read_rows(b"", 3)
    assert r.encoding == "utf-8" and r.bom is False and r.bytes_read == 0


@pytest.mark.parametrize("tail", [" ", "\r\n", "\n\n\t ", "\r\n  \r\n"])
@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-8"])
def test_trailing_whitespace_after_last_terminator_is_fine(tail, encoding):
    rows = tricky_rows(fc=3, n=4)
    data = encode_rows(rows, encoding) + tail.encode(encoding)
    for size in (None, 1, 3):
        assert read_rows(data, 3, size)[0] == rows
        assert read_copy(data, 3, "", size)[0] == expected_copy(rows, "")


# ---------------------------------------------------------------- errors, each with its row number
def five_rows(fc=5):
    return [[f"r{i}f{j}" for j in range(fc)] for i in range(1, 6)]


@pytest.mark.parametrize("size", [None, 1, 7])
@pytest.mark.parametrize("mode", ["rows", "copy"])
def test_wrong_field_count_in_row_3_of_5(size, mode):
    rows = five_rows()
    rows[2] = rows[2] + ["extra"]
    data = encode_rows(rows)
    got = []

    def run():
        r = IndiciReader(pieces(data, size) if size else [data], 5, chunk_chars=16 if size else 1 << 20)
        if mode == "rows":
            for row in r.rows():
                got.append(row)
        else:
            for block in r.copy_blocks(""):
                got.extend(p[2] for p in parse_copy(block, 0))

    e = raises_kind(run, "field_count")
    assert e.row_number == 3 and e.expected == 5 and e.found == 6
    assert "row 3" in e.detail and "expected 5" in e.detail and "found 6" in e.detail
    assert got == rows[:2]  # rows before the bad one were produced, none after


@pytest.mark.parametrize("mode", ["rows", "copy"])
def test_compensating_field_count_errors_are_not_hidden(mode):
    # row 2 has one field too many and row 3 one too few: the total separator count is right
    rows = five_rows()
    rows[1] = rows[1] + ["extra"]
    rows[2] = rows[2][:-1]
    data = encode_rows(rows)
    r = IndiciReader([data], 5)
    e = raises_kind(lambda: list(r.rows() if mode == "rows" else r.copy_blocks("")), "field_count")
    assert e.row_number == 2 and e.found == 6


def test_too_few_fields_and_an_empty_row():
    data = encode_rows([["a", "b"], ["c", "d"]]) + "|~~|".encode("utf-16-le")
    e = raises_kind(lambda: read_rows(data, 2), "field_count")
    assert e.row_number == 3 and e.found == 1 and e.expected == 2
    e = raises_kind(lambda: read_copy(data, 2, size=3), "field_count")
    assert e.row_number == 3 and e.found == 1


@pytest.mark.parametrize("size", [None, 1, 3])
@pytest.mark.parametrize("mode", ["rows", "copy"])
@pytest.mark.parametrize(
    "tail",
    # "\\rn": once COPY-escaped it reads '\\\\rn', which a naive strip of '\\r'/'\\n' would empty
    ["r6f0|^^|r6f1", "x", "|~~", "  x  ", "\\n", "\\", "|^^|", "\\rn", "\\nr", "\\tr", " \\r\n"],
)
def test_truncated_last_row(size, mode, tail):
    rows = five_rows()
    data = encode_rows(rows) + tail.encode("utf-16-le")
    fn = (lambda: read_rows(data, 5, size)) if mode == "rows" else (lambda: read_copy(data, 5, "", size))
    e = raises_kind(fn, "truncated")
    assert e.row_number == 6 and "row 6" in e.detail


def test_missing_final_terminator_is_truncated():
    text = "a|^^|b|~~|c|^^|d"
    e = raises_kind(lambda: read_rows(text.encode("utf-16-le"), 2), "truncated")
    assert e.row_number == 2


@pytest.mark.parametrize("mode", ["rows", "copy"])
def test_odd_trailing_byte(mode):
    good = encode_rows(five_rows())
    data = good + b"x"
    fn = (lambda: read_rows(data, 5, 3)) if mode == "rows" else (lambda: read_copy(data, 5, "", 3))
    e = raises_kind(fn, "decode")
    assert e.row_number == 6 and e.byte_offset == len(good)
    assert "row 6" in e.detail and str(len(good)) in e.detail


@pytest.mark.parametrize("mode", ["rows", "copy"])
@pytest.mark.parametrize("size", [None, 1, 5])
@pytest.mark.parametrize("chunk_chars", [1, 3, 1 << 20])
@pytest.mark.parametrize(
    "bad", [b"\x00\xd8a\x00", b"\x00\xdc", b"\x3d\xd8\x3d\xd8\x00\xde"], ids=["high", "low", "high-high-low"]
)
def test_lone_surrogate(mode, size, chunk_chars, bad):
    rows = five_rows()
    head = encode_rows(rows[:3]) + "r4f0|^^|r4".encode("utf-16-le")
    data = head + bad + "f1|^^|r4f2|^^|r4f3|^^|r4f4|~~|".encode("utf-16-le") + encode_rows(rows[4:])
    if mode == "rows":
        fn = lambda: read_rows(data, 5, size, chunk_chars=chunk_chars)  # noqa: E731
    else:
        fn = lambda: read_copy(data, 5, "", size, chunk_chars=chunk_chars)  # noqa: E731
    e = raises_kind(fn, "decode")
    assert e.row_number == 4
    assert e.byte_offset == len(head)
    assert "row 4" in e.detail


def test_high_surrogate_at_end_of_file():
    good = encode_rows(five_rows())
    e = raises_kind(lambda: read_rows(good + b"\x3d\xd8", 5), "decode")
    assert e.row_number == 6 and e.byte_offset == len(good)


@pytest.mark.parametrize("bom", [False, True])
@pytest.mark.parametrize("size", [None, 1, 4])
@pytest.mark.parametrize("chunk_chars", [1, 2, 3, 1 << 20])
@pytest.mark.parametrize("bad", [b"\xff", b"\xc3(", b"\xe2\x82", b"\xed\xa0\x80"])
def test_invalid_utf8(bom, size, chunk_chars, bad):
    rows = five_rows()
    head = encode_rows(rows[:1], "utf-8", bom=bom) + "r2f0|^^|r2".encode("utf-8")
    data = head + bad + "f1|^^|a|^^|b|^^|c|~~|".encode("utf-8") + encode_rows(rows[2:], "utf-8")
    e = raises_kind(lambda: read_rows(data, 5, size, chunk_chars=chunk_chars), "decode")
    assert e.row_number == 2
    assert e.byte_offset == len(head)  # the offset counts the BOM too
    e = raises_kind(lambda: read_copy(data, 5, "", size, chunk_chars=chunk_chars), "decode")
    assert e.row_number == 2 and e.byte_offset == len(head)


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-8"])
@pytest.mark.parametrize("size", [None, 1, 3])
@pytest.mark.parametrize("mode", ["rows", "copy"])
def test_nul_character(encoding, size, mode):
    rows = five_rows()
    rows[3][1] = "bad\x00value"
    data = encode_rows(rows, encoding)
    fn = (lambda: read_rows(data, 5, size)) if mode == "rows" else (lambda: read_copy(data, 5, "", size))
    e = raises_kind(fn, "nul")
    assert e.row_number == 4 and e.field_number == 2
    assert "row 4" in e.detail


def test_errors_come_in_file_order():
    # a field-count error in row 2 comes before a NUL in row 4 of the same chunk
    rows = five_rows()
    rows[1] = rows[1][:-1]
    rows[3][0] = "\x00"
    e = raises_kind(lambda: read_copy(encode_rows(rows), 5), "field_count")
    assert e.row_number == 2


def test_row_too_long():
    data = ("x" * 500).encode("utf-16-le")  # no terminator at all
    e = raises_kind(lambda: read_rows(data, 1, 7, chunk_chars=16, max_row_chars=100), "row_too_long")
    assert e.row_number == 1
    e = raises_kind(lambda: read_copy(data, 1, "", 7, chunk_chars=16, max_row_chars=100), "row_too_long")
    assert e.row_number == 1


def test_error_pickles():
    e = IndiciFormatError("field_count", 3, "row 3: expected 5 fields, found 6", expected=5, found=6)
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.kind, e2.row_number, e2.detail, e2.expected, e2.found) == ("field_count", 3, e.detail, 5, 6)
    with pytest.raises(ValueError):
        IndiciFormatError("nope", None, "x")


# ---------------------------------------------------------------- misc API
def test_reader_iterates_once():
    r = IndiciReader([encode_rows([["a"]])], 1)
    list(r.rows())
    with pytest.raises(RuntimeError):
        list(r.copy_blocks(""))


def test_sha256_is_none_until_exhausted():
    r = IndiciReader([encode_rows([["a"], ["b"]])], 1)
    it = r.rows()
    next(it)
    assert r.sha256 is None
    list(it)
    assert r.sha256 is not None


def test_an_unhashed_reader_gives_the_same_copy_lines_and_no_hash():
    # The landing's spool hashes the object's bytes itself; its reader must then produce exactly the
    # lines a hashing reader does (and count the bytes, which the landing checks), without a hash.
    data = encode_rows([TRICKY[:3], TRICKY[3:6], TRICKY[6:9]], bom=True)
    hashed = IndiciReader(iter([data[:7], data[7:]]), 3)
    unhashed = IndiciReader(iter([data[:7], data[7:]]), 3, hashed=False)
    lines = b"".join(hashed.copy_bytes("p\t"))
    assert b"".join(unhashed.copy_bytes("p\t")) == lines
    assert hashed.sha256 == hashlib.sha256(data).hexdigest()
    assert unhashed.sha256 is None
    assert unhashed.bytes_read == hashed.bytes_read == len(data)
    assert unhashed.rows_read == 3


def test_iter_file_chunks(tmp_path):
    p = tmp_path / "f.csv"
    p.write_bytes(bytes(range(256)) * 3)
    chunks = list(iter_file_chunks(p, size=100))
    assert [len(c) for c in chunks] == [100] * 7 + [68]
    assert b"".join(chunks) == p.read_bytes()
    assert list(iter_file_chunks(FIXTURE))[0] == FIXTURE.read_bytes()


def test_utf16_be_with_bom():
    rows = tricky_rows()
    data = encode_rows(rows, "utf-16-be", bom=True)
    assert data[:2] == codecs.BOM_UTF16_BE
    got, r = read_rows(data, 5, 3)
    assert got == rows and r.encoding == "utf-16-be" and r.bom


def test_small_chunk_chars_really_processes_in_small_steps():
    # guards the tests above: with a tiny chunk_chars the carried partial row is exercised
    rows = tricky_rows(fc=4, n=25)
    for encoding in ("utf-16-le", "utf-8"):
        data = encode_rows(rows, encoding, bom=True)
        blocks = list(IndiciReader(pieces(data, 3), 4, chunk_chars=5).copy_blocks(""))
        assert len(blocks) > 10
        assert "".join(blocks) == expected_copy(rows, "")
