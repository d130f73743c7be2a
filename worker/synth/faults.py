"""Fault injection for synthetic extracts: exactly what was planted, where, so tests can check the reaction.

Row-level faults change values in a row and keep its field count (what a correct reader returns is the
row as planted, so :attr:`GeneratedFile.rows` reflects them exactly):

- ``bad_timestamp``        a timestamp column gets e.g. ``2025-13-45 25:61:00.000``
- ``impossible_date``      a date column gets e.g. ``2025-02-30`` (a timestamp column if there is no date)
- ``unknown_domain_value`` a coded (domain) column gets a value outside the generator's vocabulary
- ``missing_required``     the id column or the fact's main date is emptied
- ``bad_reference``        a reference column gets ``abc``
- ``duplicate_key``        a copy of an earlier row (same natural key, some values changed) is inserted later
- ``nasty_text``           text columns get CR, LF, CRLF, tab, backslash, ``"``, ``|``, padding, ``\\N``,
                           ``Māori``, an emoji (one fault entry per column)
- ``dst_times``            timestamps in the NZ DST gap (spring forward) and overlap (fall back) hours
- ``invalid_nhi``          an NHI column gets an NHI-shaped value with a wrong check character

Fatal faults make a correct reader reject the whole file (at most one per file):

- ``wrong_field_count``    a row with one field fewer or more (the intended row has that count)
- ``invalid_utf16``        a lone surrogate inside a row, or an odd trailing byte (bytes only; in a UTF-8
                           file an invalid UTF-8 byte)
- ``truncated_last_row``   the bytes end after some fields of the last row, without ``|~~|`` (bytes only)

:data:`READER_KIND` maps fatal faults to ``IndiciFormatError.kind``; each fault's ``row_number`` is the
row the reader must name (for ``odd_trailing_byte`` that is the row after the last one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from random import Random
from typing import Any, Iterable, Mapping, Sequence

from contracts.model import ColumnSpec, ExtractSpec
from contracts.types import ContractType

from worker.synth import values as V
from worker.synth.writer import SEP, TERM, GeneratedFile, bom_bytes

ROW_FAULTS = (
    "bad_timestamp", "impossible_date", "unknown_domain_value", "missing_required", "bad_reference",
    "duplicate_key", "nasty_text", "dst_times", "invalid_nhi",
)
FATAL_FAULTS = ("wrong_field_count", "invalid_utf16", "truncated_last_row")
FAULT_KINDS = ROW_FAULTS + FATAL_FAULTS
READER_KIND = {"wrong_field_count": "field_count", "invalid_utf16": "decode", "truncated_last_row": "truncated"}

BAD_TIMESTAMPS = ["2025-13-45 25:61:00.000", "2025-02-11 24:61:99.000", "29/01/2025 18:18", "2025-01-29T18:18:11+13:00",
                  "not a time"]
IMPOSSIBLE_DATES = ["2025-02-30", "2023-02-29", "2025-04-31", "2025-00-10"]
NASTY_TEXT = [
    "line one\r\nline two",
    "first\nsecond",
    "carriage\rreturn",
    "tab\there",
    "back\\slash C:\\Jobs\\x",
    'she said "kia ora", then left',
    "a | b",
    "  padded both sides  ",
    "\\N",
    "Māori: Ngāti Whātua ki Ōrākei",
    "emoji 🌿 and 𝄞",
    "comma, semicolon; 'quote'",
]


@dataclass(frozen=True)
class InjectedFault:
    """One planted fault: ``row_number`` 1-based in file order, ``column`` the spec column (if any)."""

    kind: str
    row_number: int | None
    column: str | None
    value: str | None
    detail: str = ""
    field_number: int | None = None  # 1-based field position, where the column alone does not say it

    @property
    def fatal(self) -> bool:
        return self.kind in FATAL_FAULTS

    @property
    def reader_kind(self) -> str | None:
        return READER_KIND.get(self.kind)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fatal"] = self.fatal
        return d


@dataclass(frozen=True)
class FaultPlan:
    """Which faults to plant, how many, where.

    ``counts[kind]``: that many instances, each in a (seeded) random eligible file. ``rates[kind]``: per
    eligible file, that share of its rows (row-level kinds) or that probability of the file (fatal kinds).
    ``extracts`` limits the files (names); ``batches`` the batch indices (None: only the last batch, the
    one the nightly run picks up). A file never gets more than one fatal fault, and row-level faults
    avoid files that have one when others are eligible.
    """

    counts: Mapping[str, int] = field(default_factory=dict)
    rates: Mapping[str, float] = field(default_factory=dict)
    extracts: tuple[str, ...] | None = None
    batches: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        unknown = (set(self.counts) | set(self.rates)) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {', '.join(FAULT_KINDS)}")

    @classmethod
    def parse(cls, faults: "FaultPlan | str | Iterable[str] | Mapping[str, int] | None") -> "FaultPlan | None":
        """None, a FaultPlan, ``"kind,kind"``, a list of kinds (one each; repeat a kind for more) or {kind: count}."""
        if faults is None or isinstance(faults, FaultPlan):
            return faults
        if isinstance(faults, str):
            faults = [f.strip() for f in faults.split(",") if f.strip()]
        if isinstance(faults, Mapping):
            return cls(counts=dict(faults))
        counts: dict[str, int] = {}
        for kind in faults:
            if kind == "all":
                for k in FAULT_KINDS:
                    counts[k] = counts.get(k, 0) + 1
            else:
                counts[kind] = counts.get(kind, 0) + 1
        return cls(counts=counts) if counts else None


# ---------------------------------------------------------------------------------------------------
# Column candidates per kind
# ---------------------------------------------------------------------------------------------------


def _cols(spec: ExtractSpec, kind: str) -> list[ColumnSpec]:
    cols = spec.columns
    ts = [c for c in cols if c.type is ContractType.TIMESTAMP_NZ]
    ts_real = [c for c in ts if c.column != "loaded_date_time"] or ts
    keyish = set(spec.natural_key) | {"per_org_id", "practice_id"}
    if kind == "bad_timestamp" or kind == "dst_times":
        return ts_real
    if kind == "impossible_date":
        return [c for c in cols if c.type is ContractType.DATE] or ts_real
    if kind == "unknown_domain_value":
        return [c for c in cols if c.domain]
    if kind == "missing_required":
        main = V.main_date_column(spec)
        return [spec.column(spec.id_column)] + ([spec.column(main)] if main else [])
    if kind == "bad_reference":
        return [c for c in cols if c.references and c.column not in keyish]
    if kind == "nasty_text":
        return [c for c in cols if c.type is ContractType.TEXT and not c.domain and not V.is_nhi_column(c)
                and c.column not in keyish]
    if kind == "invalid_nhi":
        return [c for c in cols if V.is_nhi_column(c) and c.type is ContractType.TEXT]
    return list(cols)


def eligible(spec: ExtractSpec, file: GeneratedFile, kind: str) -> bool:
    if not file.rows:
        return False
    if kind in FATAL_FAULTS or kind == "duplicate_key":
        return True
    return bool(_cols(spec, kind))


# ---------------------------------------------------------------------------------------------------
# Planting
# ---------------------------------------------------------------------------------------------------


@dataclass
class _FileState:
    file: GeneratedFile
    spec: ExtractSpec
    used: set[int] = field(default_factory=set)  # 0-based indices of rows already carrying a fault
    planned: list[str] = field(default_factory=list)


def plant(files: Sequence[GeneratedFile], specs: Mapping[str, ExtractSpec], plan: FaultPlan | None,
          rng: Random, *, batch_count: int | None = None) -> list[InjectedFault]:
    """Plant row-level faults into ``files`` (rows change) and record fatal ones (applied by :func:`corrupt`).

    Call before encoding; then call :func:`corrupt` on each file after ``file.data`` is set.
    """
    if plan is None:
        return []
    last = batch_count - 1 if batch_count else max((f.batch for f in files), default=0)
    batches = set(plan.batches) if plan.batches is not None else {last}
    wanted = {e.lower() for e in plan.extracts} if plan.extracts else None
    states = [
        _FileState(f, specs[f.extract]) for f in files
        if f.batch in batches and (wanted is None or f.extract.lower() in wanted)
    ]
    # what goes where: fatal kinds first so that row-level faults can avoid those files
    for kind in FATAL_FAULTS + ROW_FAULTS:
        cands = [s for s in states if eligible(s.spec, s.file, kind)]
        if kind in FATAL_FAULTS:
            cands = [s for s in cands if not any(k in FATAL_FAULTS for k in s.planned)]
        else:
            healthy = [s for s in cands if not any(k in FATAL_FAULTS for k in s.planned)]
            cands = healthy or cands
        if not cands:
            continue
        for _ in range(plan.counts.get(kind, 0)):
            # every fault takes a row of its own: only files with a free row, the least-used first
            pool = [s for s in cands if len(s.planned) < len(s.file.rows)]
            if kind in FATAL_FAULTS:
                pool = [s for s in pool if not any(k in FATAL_FAULTS for k in s.planned)]
            if not pool:
                break
            fewest = min(len(s.planned) for s in pool)
            rng.choice([s for s in pool if len(s.planned) == fewest]).planned.append(kind)
        rate = plan.rates.get(kind, 0.0)
        if rate:
            for s in cands:
                free = len(s.file.rows) - len(s.planned)
                if kind in FATAL_FAULTS:
                    if free > 0 and rng.random() < rate and not any(k in FATAL_FAULTS for k in s.planned):
                        s.planned.append(kind)
                else:
                    s.planned.extend([kind] * min(free, round(rate * len(s.file.rows))))
    out: list[InjectedFault] = []
    for s in states:
        if not s.planned:
            continue
        order = sorted(s.planned, key=lambda k: (k != "duplicate_key", FAULT_KINDS.index(k)))
        for kind in order:
            out.extend(_apply(s, kind, rng))
        s.file.faults.sort(key=lambda f: (f.row_number or 0, f.kind, f.column or ""))
    return out


def _free_row(s: _FileState, rng: Random) -> int | None:
    n = len(s.file.rows)
    free = [i for i in range(n) if i not in s.used]
    if not free:
        return None
    i = rng.choice(free)
    s.used.add(i)
    return i


def _record(s: _FileState, fault: InjectedFault) -> list[InjectedFault]:
    s.file.faults.append(fault)
    return [fault]


def _apply(s: _FileState, kind: str, rng: Random) -> list[InjectedFault]:
    spec, f = s.spec, s.file
    names = spec.column_names
    if kind == "duplicate_key":
        return _duplicate(s, rng)
    if kind == "truncated_last_row":
        s.used.add(len(f.rows) - 1)
        return _record(s, InjectedFault(kind, len(f.rows), None, None, "bytes end inside the last row"))
    if kind == "invalid_utf16":
        if rng.random() < 0.75:
            i = _free_row(s, rng)
            if i is None:
                i = len(f.rows) - 1
            j = rng.randrange(len(f.rows[i]))
            col = names[j] if j < len(names) else None
            return _record(s, InjectedFault(kind, i + 1, col, "lone_surrogate",
                                            f"a lone surrogate at the start of field {j + 1}", j + 1))
        return _record(s, InjectedFault(kind, len(f.rows) + 1, None, "odd_trailing_byte",
                                        "one byte after the last row terminator"))
    i = _free_row(s, rng)
    if i is None:
        return []
    row = f.rows[i]
    if kind == "wrong_field_count":
        n = len(row)
        if rng.random() < 0.5 and n > 2:
            j = rng.randrange(n)
            del row[j]
            detail = f"field {j + 1} removed: {n - 1} fields instead of {n}"
        else:
            j = rng.randrange(n + 1)
            row.insert(j, "extra")
            detail = f"a field inserted at position {j + 1}: {n + 1} fields instead of {n}"
        return _record(s, InjectedFault(kind, i + 1, names[min(j, n - 1)], str(len(row)), detail, j + 1))
    cols = _cols(spec, kind)
    if kind == "nasty_text":
        picked = rng.sample(cols, min(len(cols), len(NASTY_TEXT)))
        out = []
        for c, v in zip(picked, rng.sample(NASTY_TEXT, len(picked))):
            row[names.index(c.column)] = v
            out += _record(s, InjectedFault(kind, i + 1, c.column, v))
        return out
    if kind == "dst_times":
        year = f.date_to.year
        back, fwd = V.dst_transition_dates(year)
        values = [(f"{fwd.isoformat()} 02:30:00.000", "gap"), (f"{back.isoformat()} 02:30:00.000", "overlap")]
        picked = rng.sample(cols, min(2, len(cols)))
        out = []
        for k, c in enumerate(picked):
            v, what = values[k] if len(picked) == 2 else values[rng.randrange(2)]
            row[names.index(c.column)] = v
            out += _record(s, InjectedFault(kind, i + 1, c.column, v, f"local time in the DST {what} hour"))
        return out
    c = rng.choice(cols)
    j = names.index(c.column)
    if kind == "bad_timestamp":
        v = rng.choice(BAD_TIMESTAMPS)
    elif kind == "impossible_date":
        v = rng.choice(IMPOSSIBLE_DATES)
        if c.type is ContractType.TIMESTAMP_NZ:
            v += " 10:15:00.000"
    elif kind == "unknown_domain_value":
        v = "987" if c.type in (ContractType.INTEGER, ContractType.BIGINT) else rng.choice(V.UNKNOWN_DOMAIN_VALUES)
    elif kind == "missing_required":
        v = ""
    elif kind == "bad_reference":
        v = "abc"
    elif kind == "invalid_nhi":
        v = V.make_invalid_nhi(rng)
    else:  # pragma: no cover
        raise ValueError(kind)
    row[j] = v
    return _record(s, InjectedFault(kind, i + 1, c.column, v))


def _duplicate(s: _FileState, rng: Random) -> list[InjectedFault]:
    f, spec = s.file, s.spec
    names = spec.column_names
    src = rng.randrange(len(f.rows))
    copy = list(f.rows[src])
    main = V.main_date_column(spec)
    mutable = [j for j, c in enumerate(spec.columns)
               if c.column not in spec.natural_key and not c.references and c.column != main
               and c.column != "loaded_date_time"]
    changed = []
    if "updated_at" in names:
        j = names.index("updated_at")
        copy[j] = V.mutate_value(spec, spec.columns[j], copy[j], rng)
        changed.append("updated_at")
    if mutable:
        j = rng.choice(mutable)
        new = V.mutate_value(spec, spec.columns[j], copy[j], rng)
        if new != copy[j]:
            copy[j] = new
            changed.append(names[j])
    if copy == f.rows[src]:  # nothing mutable: change any non-key column
        for j, c in enumerate(spec.columns):
            if c.column not in spec.natural_key:
                copy[j] = V.mutate_value(spec, c, copy[j], rng)
                changed.append(c.column)
                break
    dst = rng.randint(src + 1, len(f.rows))  # insert after the source row
    f.rows.insert(dst, copy)
    # shift recorded positions of rows at or after dst
    s.used = {u + 1 if u >= dst else u for u in s.used} | {src, dst}
    shifted = []
    for old in f.faults:
        if old.row_number is not None and old.row_number - 1 >= dst:
            shifted.append(InjectedFault(old.kind, old.row_number + 1, old.column, old.value, old.detail,
                                         old.field_number))
        else:
            shifted.append(old)
    f.faults[:] = shifted
    key = ",".join(f"{k}={copy[names.index(k)]}" for k in spec.natural_key)
    return _record(s, InjectedFault("duplicate_key", dst + 1, ",".join(changed) or None, key,
                                    f"repeats row {src + 1} with changed values"))


# ---------------------------------------------------------------------------------------------------
# Byte-level faults (after encoding)
# ---------------------------------------------------------------------------------------------------


def corrupt(file: GeneratedFile) -> None:
    """Apply the file's byte-level faults (invalid_utf16, truncated_last_row) to ``file.data``."""
    for fault in file.faults:
        if fault.kind == "truncated_last_row":
            file.data = _truncated(file)
        elif fault.kind == "invalid_utf16":
            file.data = _invalid_bytes(file, fault)


def _prefix_bytes(file: GeneratedFile, text: str) -> int:
    return len(bom_bytes(file.encoding) if file.bom else b"") + len(text.encode(file.encoding, "surrogatepass"))


def _truncated(file: GeneratedFile) -> bytes:
    rows = file.rows
    head = "".join(SEP.join(r) + TERM for r in rows[:-1])
    last = rows[-1]
    k = max(1, min(len(last) - 1, len(last) // 2))
    partial = SEP.join(last[:k]) + SEP  # "cut after some fields": ends right after a separator
    data = (head + partial).encode(file.encoding, "surrogatepass")
    return (bom_bytes(file.encoding) + data) if file.bom else data


def _invalid_bytes(file: GeneratedFile, fault: InjectedFault) -> bytes:
    data = file.data
    if fault.value == "odd_trailing_byte":
        return data + (b"\x00" if file.encoding != "utf-8" else b"\xff")
    i = (fault.row_number or 1) - 1
    row = file.rows[i]
    j = min((fault.field_number or 1) - 1, len(row) - 1)
    text = "".join(SEP.join(r) + TERM for r in file.rows[:i]) + "".join(f + SEP for f in row[:j])
    at = _prefix_bytes(file, text)
    bad = b"\x00\xd8" if file.encoding != "utf-8" else b"\xff"  # U+D800 alone (UTF-16LE) / never valid UTF-8
    return data[:at] + bad + data[at:]


__all__ = ["FAULT_KINDS", "ROW_FAULTS", "FATAL_FAULTS", "READER_KIND", "InjectedFault", "FaultPlan", "plant",
           "corrupt", "eligible", "NASTY_TEXT"]
