"""One column of raw text -> its checked value, parse verdict and typed Arrow array, vectorised.

The rules are those of contracts/sql/staging.py (the reference) and contracts/types.py, computed with
pyarrow.compute (patterns: RE2, which agrees with Postgres' regular expressions on these anchored ASCII
patterns) and numpy over the UTF-8 bytes of values that already matched their pattern (fixed fields
for dates, times and UUIDs). No Python code runs per value.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contracts.sql.staging import MAX_DIGITS, TRIM_CHARS
from contracts.types import (
    MONEY_LIMIT,
    NO_DATE_SENTINEL,
    PLAUSIBLE_DATES,
    ContractType,
    rule_for,
)
from worker.pipeline.typing_engine.localtime import local_to_utc_seconds

DATE_TYPES = (ContractType.DATE, ContractType.TIMESTAMP_NZ)
_INT_PATTERN = {n: rf"^[+-]?[0-9]{{1,{d}}}$" for n, d in MAX_DIGITS.items()}
_MONEY_TYPE = pa.decimal128(16, 4)  # the money pattern: at most 12 integer and 4 fraction digits
_MONEY_LIMIT = pa.scalar(Decimal(MONEY_LIMIT), _MONEY_TYPE)
_RANGE = tuple(int(d.replace("-", "")) for d in PLAUSIBLE_DATES)

# Arrow types of the typed stg columns (what pgpq encodes for binary COPY).
ARROW_TYPES: dict[ContractType, pa.DataType] = {
    ContractType.TEXT: pa.string(),
    ContractType.BIGINT: pa.int64(),
    ContractType.INTEGER: pa.int32(),
    ContractType.BOOLEAN: pa.bool_(),
    ContractType.NUMERIC: pa.string(),  # exact text, cast by Postgres (numeric keeps its written scale)
    ContractType.MONEY: _MONEY_TYPE,  # rounded to numeric(14,2) by the column's typmod on COPY
    ContractType.DOUBLE: pa.float64(),
    ContractType.DATE: pa.date32(),
    ContractType.TIMESTAMP_NZ: pa.timestamp("us", tz="UTC"),
    ContractType.UUID: pa.binary(16),
}


@dataclass
class Checked:
    """A column of one block after its check.

    v: the value that is checked (typed columns trimmed), null where empty.
    present: v is not null. ok: v parses (false where absent). typed: the stg value (null where absent,
    not ok, or the no-date sentinel). no_date: v starts with the no-date sentinel (date types only).
    """

    v: pa.Array
    present: np.ndarray
    ok: np.ndarray
    typed: pa.Array
    no_date: np.ndarray | None


def _bool(values: pa.Array) -> np.ndarray:
    """A boolean Arrow array as numpy, null -> False."""
    return np.asarray(values.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def _nullif_empty(values: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """The values with empty strings as nulls (zero-copy: a validity bitmap over the same buffers), and
    the numpy mask of the non-empty ones."""
    values = values.cast(pa.string())
    _, offsets_buf, data_buf = values.buffers()[:3]
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[values.offset: values.offset + len(values) + 1]
    present = offsets[1:] > offsets[:-1]
    if values.null_count:
        present &= _bool(pc.is_valid(values))
    validity = pa.py_buffer(np.packbits(present, bitorder="little").tobytes())
    out = pa.Array.from_buffers(pa.string(), len(values), [validity, offsets_buf, data_buf], offset=values.offset)
    return out, present


def _mask(values: pa.Array, ok: np.ndarray) -> pa.Array:
    return pc.if_else(pa.array(ok, pa.bool_()), values, pa.scalar(None, values.type))


def _utf8_bytes(values: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data, starts, lengths) of a string array's UTF-8 bytes (null slots: whatever is there)."""
    values = values.cast(pa.string())
    _, offsets_buf, data_buf = values.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[values.offset: values.offset + len(values) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None and data_buf.size else np.zeros(1, np.uint8)
    starts = offsets[:-1].astype(np.int64)
    return data, starts, (offsets[1:] - offsets[:-1]).astype(np.int64)


def _fields(data: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """The first `width` bytes of each value as an n x width matrix of digit values (byte - '0', int16);
    past a value's end, or for bytes that are not digits, meaningless (callers use matched values only)."""
    if len(starts) == 0:
        return np.zeros((0, width), np.int16)
    if int(starts.max()) + width > len(data):
        data = np.concatenate([data, np.zeros(width, np.uint8)])
    windows = np.lib.stride_tricks.sliding_window_view(data, width)  # a view: no copy
    return windows[starts].astype(np.int16) - 48


def _number(fields: np.ndarray, position: int, count: int) -> np.ndarray:
    """The integer written by `count` digits at `position` of each row of a _fields matrix."""
    out = fields[:, position].astype(np.int64)
    for k in range(1, count):
        out = out * 10 + fields[:, position + k]
    return out


def _days_from_civil(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of proleptic Gregorian dates (H. Hinnant's algorithm), vectorised."""
    y = y - (m <= 2)
    era = np.floor_divide(y, 400)
    yoe = y - era * 400
    mp = (m + 9) % 12
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _dates(fields: np.ndarray, matched: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For values that matched a date-shaped pattern: (ok, days since 1970)."""
    y = _number(fields, 0, 4)
    m = _number(fields, 5, 2)
    d = _number(fields, 8, 2)
    leap = ((y % 4 == 0) & (y % 100 != 0)) | (y % 400 == 0)
    month_days = np.where(np.isin(m, (4, 6, 9, 11)), 30, np.where(m == 2, np.where(leap, 29, 28), 31))
    ymd = y * 10000 + m * 100 + d
    ok = matched & (d <= month_days) & (ymd >= _RANGE[0]) & (ymd <= _RANGE[1])
    days = np.where(ok, _days_from_civil(y, np.where(ok, m, 1), np.where(ok, d, 1)), 0)
    return ok, days


_HEX = np.zeros(256, dtype=np.uint8)
for _i, _ch in enumerate(b"0123456789abcdef"):
    _HEX[_ch] = _i
for _i, _ch in enumerate(b"ABCDEF"):
    _HEX[_ch] = 10 + _i
_UUID_HEX_POSITIONS = np.asarray([p for p in range(36) if p not in (8, 13, 18, 23)])


def _uuid_bytes(v: pa.Array, ok: np.ndarray) -> pa.Array:
    """The 16 bytes of each UUID that matched the pattern (what uuid_recv reads in binary COPY)."""
    data, starts, _ = _utf8_bytes(v)
    rows = np.flatnonzero(ok)
    raw = np.zeros((len(v), 16), dtype=np.uint8)
    if len(rows):
        nibbles = _HEX[data[starts[rows][:, None] + _UUID_HEX_POSITIONS[None, :]]]  # m x 32
        raw[rows] = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(16), len(v), [pa.array(ok, pa.bool_()).buffers()[1], pa.py_buffer(raw.tobytes())]
    )


def check_column(col_type: ContractType, raw: pa.Array, mapped: pa.Array | None = None) -> Checked:
    """Check and type one column of raw strings (no nulls) of one block.

    `mapped`: for a domain column whose unmapped values reject, the mapped values of the domain.
    """
    if col_type is ContractType.TEXT:
        v, present = _nullif_empty(raw)
    else:
        v, present = _nullif_empty(pc.ascii_trim(raw, TRIM_CHARS))
    no_date = None
    if col_type is ContractType.TEXT:
        ok = present.copy()
        typed = v
    elif col_type in MAX_DIGITS:
        ok = _bool(pc.match_substring_regex(v, _INT_PATTERN[col_type]))
        cleaned = pc.ascii_ltrim(_mask(v, ok), "+")
        typed = pc.cast(cleaned, ARROW_TYPES[col_type])
    elif col_type is ContractType.BOOLEAN:
        ok = _bool(pc.is_in(v, value_set=pa.array(["0", "1"])))
        typed = _mask(pc.equal(v, "1"), ok)
    elif col_type in (ContractType.NUMERIC, ContractType.UUID, ContractType.DOUBLE, ContractType.MONEY):
        ok = _bool(pc.match_substring_regex(v, rule_for(col_type).pattern))
        if col_type is ContractType.NUMERIC:
            typed = _mask(v, ok)
        elif col_type is ContractType.DOUBLE:
            typed = pc.cast(_mask(v, ok), pa.float64())
        elif col_type is ContractType.MONEY:
            amounts = pc.cast(_mask(v, ok), _MONEY_TYPE)
            ok = ok & _bool(pc.less(pc.abs(amounts), _MONEY_LIMIT))
            typed = _mask(amounts, ok)
        else:
            typed = _uuid_bytes(v, ok)
    elif col_type in DATE_TYPES:
        matched = _bool(pc.match_substring_regex(v, rule_for(col_type).pattern))
        data, starts, lengths = _utf8_bytes(v)
        rows = np.flatnonzero(matched)  # fixed-field arithmetic only where the pattern matched
        fields = _fields(data, starts[rows], 26 if col_type is ContractType.TIMESTAMP_NZ else 10)
        ok_rows, days = _dates(fields, np.ones(len(rows), dtype=bool))
        ok = np.zeros(len(v), dtype=bool)
        ok[rows] = ok_rows
        no_date = _bool(pc.starts_with(v, NO_DATE_SENTINEL))
        stored = ok & ~no_date
        if col_type is ContractType.DATE:
            values = np.zeros(len(v), dtype=np.int32)
            values[rows] = days
            typed = pa.array(values, pa.int32(), mask=~stored).cast(pa.date32())
        else:
            length = lengths[rows]
            h = _number(fields, 11, 2)
            mi = _number(fields, 14, 2)
            sec = np.where(length >= 19, _number(fields, 17, 2), 0)
            micros = np.zeros(len(rows), dtype=np.int64)
            for k in range(6):  # fraction digits at 20..25, where written
                micros = micros * 10 + np.where(length > 20 + k, fields[:, 20 + k], 0)
            local = days * 86_400 + h * 3600 + mi * 60 + sec
            stored_rows = stored[rows]
            utc = np.where(stored_rows, local_to_utc_seconds(np.where(stored_rows, local, 0)), 0)
            values = np.zeros(len(v), dtype=np.int64)
            values[rows] = utc * 1_000_000 + micros
            typed = pa.array(values, pa.int64(), mask=~stored).cast(pa.timestamp("us", tz="UTC"))
    else:  # pragma: no cover - every contract type is handled above
        raise NotImplementedError(col_type)
    if mapped is not None:
        ok = ok & _bool(pc.is_in(v, value_set=mapped))
        typed = _mask(typed, ok)
    ok = ok & present
    return Checked(v=v, present=present, ok=ok, typed=typed, no_date=no_date)
