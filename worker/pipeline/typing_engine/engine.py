"""A block of one file's raw rows (column-wise Arrow strings) -> typed stg rows, rejects and counts.

Row-level rules, as contracts/sql/staging.py states them:
- a row is rejected when a key or required column is missing (empty, or the no-date sentinel in a date
  column) or a column of severity reject holds a value that fails its rule;
- a rejected row's field_errors list every failing column in contract order: the type rule (with the
  column's own severity, nullify columns included) and then `required` where the value is missing;
- a kept row's nullify-severity values that fail become NULL and are listed in its field_errors (a value
  starting with the no-date sentinel is NULL without an error);
- the duplicate-key rule (a key repeated in the file keeps its last row) needs the whole file and is
  applied by the caller (worker/pipeline/typing_engine/stage.py) with `key_hashes`.
Errors carry the raw (untrimmed) value, exactly as the SQL's jsonb_build_object does.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contracts.model import ColumnSpec, ExtractSpec, Severity
from contracts.sql.staging import ROW_TEXT_SEPARATOR
from contracts.types import ContractType, rule_for
from worker.pipeline.typing_engine.columns import ARROW_TYPES, DATE_TYPES, Checked, check_column
from worker.pipeline.typing_engine.memory import use_typing_pool

ROW_NUMBER = "row_number"
# At most this many columns are checked together (TypingEngine._check_columns): as fast as whole types
# (300k Appointments, medians of 3: 3.27-3.46 s against 3.46-3.49 s) with a peak 18 MB lower (279 MB
# against 297 MB for the typing process), since the intermediate arrays of a group scale with its size.
GROUP_COLUMNS = 8


class UnsupportedContract(ValueError):
    """The engine cannot stage this contract (the caller stages it with the SQL statements)."""


def _is_checked(col: ColumnSpec) -> bool:
    return col.type is not ContractType.TEXT or bool(col.domain and col.unmapped == "reject")


def _rule(col: ColumnSpec) -> str:
    return "unmapped_domain_value" if col.domain and col.unmapped == "reject" else rule_for(col.type).rule


def _json_string(values: pa.Array) -> pa.Array:
    """Each string as a JSON string literal (quotes included), vectorised."""
    out = pc.replace_substring(values, "\\", "\\\\")
    out = pc.replace_substring(out, '"', '\\"')
    if pc.any(pc.match_substring_regex(out, "[\\x00-\\x1f]")).as_py():
        for code in range(0x20):
            out = pc.replace_substring(out, chr(code), f"\\u{code:04x}")
    return pc.binary_join_element_wise('"', out, '"', "")


def _contiguous(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One column of a block as a single array (a block is gathered from several CSV reads)."""
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _blank_count(raw: pa.Array, present: np.ndarray | None) -> int:
    """Raw values that are empty after trimming spaces (dq's empty_rate: btrim(value) = '').
    `present`: where a typed column's trimmed value is non-empty (those are not blank)."""
    if present is not None:
        if present.all():
            return 0
        raw = pc.filter(raw, pa.array(~present, pa.bool_()))
    return int(pc.sum(pc.match_substring_regex(raw, "^ *$")).as_py() or 0)


def _error_prefix(column: str, rule: str, severity: str) -> str:
    head = json.dumps({"column": column, "rule": rule, "severity": severity})
    return head[:-1] + ', "value": '


@dataclass
class DqCounts:
    """What dq.evaluate_counts needs, accumulated over a file's blocks."""

    rule_violations: Counter = field(default_factory=Counter)  # (column|None, rule, severity) -> n
    empty: Counter = field(default_factory=Counter)  # required/key column -> raw values btrim(' ') = ''
    stg_nulls: Counter = field(default_factory=Counter)  # column -> NULLs among the staged rows
    domain_values: dict[str, set[str]] = field(default_factory=dict)  # column -> distinct raw values <> ''
    # Rows holding at least one domain value <> '' that was not mapped when the file was typed (the
    # anomaly metric unmapped_domain_rate, without a scan of raw when the run closes).
    unmapped_rows: int = 0

    def add(self, other: DqCounts) -> None:
        """Another block's counts into these (typed_blocks types blocks with counts of their own)."""
        self.rule_violations.update(other.rule_violations)
        self.empty.update(other.empty)
        self.stg_nulls.update(other.stg_nulls)
        for column, values in other.domain_values.items():
            self.domain_values.setdefault(column, set()).update(values)
        self.unmapped_rows += other.unmapped_rows


@dataclass
class TypedBlock:
    """One block typed. `kept` holds the typed stg columns (plus row_number and field_errors) of the rows
    that pass the reject rules; `rejects` (row_number, row_text, field_errors) those that do not;
    `kept_keys` the typed natural-key columns of the kept rows (for the duplicate rule)."""

    kept: pa.Table
    rejects: pa.Table
    keep: np.ndarray
    kept_violations: list[tuple[np.ndarray, tuple[str | None, str, str]]]


class TypingEngine:
    """The typing rules of one contract, applied block by block."""

    def __init__(self, spec: ExtractSpec, mapped_domains: dict[str, list[str]] | None = None) -> None:
        for key in spec.natural_key:
            if spec.column(key).type not in (ContractType.BIGINT, ContractType.INTEGER):
                raise UnsupportedContract(f"{spec.extract}: natural key {key} is not an integer column")
        use_typing_pool()
        self.spec = spec
        mapped_domains = mapped_domains or {}
        # mapped_domains: the mapped values of each domain (worker/pipeline/typing_engine/stage.py).
        self._domain_mapped = {
            c.column: pa.array(sorted(mapped_domains.get(c.domain, [])), pa.string())
            for c in spec.columns if c.domain
        }
        self._mapped = {c.column: self._domain_mapped[c.column]
                        for c in spec.columns if c.domain and c.unmapped == "reject"}
        self.columns = spec.columns
        self.stg_schema = pa.schema(
            [pa.field(ROW_NUMBER, pa.int64(), nullable=False)]
            + [pa.field(c.column, ARROW_TYPES[c.type]) for c in spec.columns]
            + [pa.field("field_errors", pa.string())]
        )
        self.rejects_schema = pa.schema(
            [pa.field(ROW_NUMBER, pa.int64()), pa.field("row_text", pa.string()), pa.field("field_errors", pa.string())]
        )
        # Columns checked together: up to GROUP_COLUMNS of one type without a domain mapping (a mapped
        # column is checked alone, against its own values), in contract order. Text columns are
        # checked alone: their check is two calls, and alone their typed values stay views of the
        # parsed block, where concatenated they were a second copy of the block's text (a 200-column
        # Patients file: peak 312 MB -> 280-283 MB, the same as checking every column alone).
        groups: dict[ContractType, list[str]] = {}
        self._groups: list[tuple[ContractType, list[str]]] = []
        for c in spec.columns:
            if c.column in self._mapped or c.type is ContractType.TEXT:
                self._groups.append((c.type, [c.column]))
            elif c.type not in groups or len(groups[c.type]) == GROUP_COLUMNS:
                groups[c.type] = [c.column]
                self._groups.append((c.type, groups[c.type]))
            else:
                groups[c.type].append(c.column)
        self._key_or_required = {c.column: c.required or c.column in spec.natural_key for c in spec.columns}
        self._severity = {c.column: spec.severity(c) for c in spec.columns}
        self._type_prefix = {
            c.column: _error_prefix(c.column, _rule(c), spec.severity(c).value) for c in spec.columns
        }
        self._nullify_prefix = {
            c.column: _error_prefix(c.column, _rule(c), Severity.NULLIFY.value) for c in spec.columns
        }
        self._required_prefix = {
            c.column: _error_prefix(c.column, "required", Severity.REJECT.value) for c in spec.columns
        }

    # -- keys ---------------------------------------------------------------------------------------
    def check_keys(self, batch: pa.RecordBatch | pa.Table) -> tuple[np.ndarray, list[pa.Array]]:
        """(ok, typed key columns) of the natural key of each row (ok: every key column parses)."""
        ok = np.ones(batch.num_rows, dtype=bool)
        typed = []
        for key in self.spec.natural_key:
            checked = check_column(self.spec.column(key).type, _contiguous(batch.column(key)))
            ok &= checked.ok
            typed.append(checked.typed)
        return ok, typed

    @staticmethod
    def key_hashes(typed_keys: list[pa.Array]) -> np.ndarray:
        """A 64-bit hash of each row's typed integer key (only a filter: equal keys hash equal)."""
        h = np.full(len(typed_keys[0]) if typed_keys else 0, 0x9E3779B97F4A7C15, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for arr in typed_keys:
                values = np.asarray(arr.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)).view(np.uint64)
                h ^= values + np.uint64(0x9E3779B97F4A7C15) + (h << np.uint64(6)) + (h >> np.uint64(2))
                h *= np.uint64(0xBF58476D1CE4E5B9)
        return h

    # -- a block ------------------------------------------------------------------------------------
    def type_block(self, batch: pa.RecordBatch | pa.Table, counts: DqCounts) -> TypedBlock:
        """Type one block: row_number (int64) and one string column per contract column, no nulls."""
        n = batch.num_rows
        checked = self._check_columns(batch)
        reject = np.zeros(n, dtype=bool)
        bad: dict[str, np.ndarray] = {}
        missing: dict[str, np.ndarray] = {}
        unmapped = np.zeros(n, dtype=bool)
        for col in self.columns:
            raw = _contiguous(batch.column(col.column))
            c = checked[col.column]
            if _is_checked(col):
                bad[col.column] = c.present & ~c.ok
                if self._severity[col.column] is Severity.REJECT:
                    reject |= bad[col.column]
            if self._key_or_required[col.column]:
                m = ~c.present
                if col.type in DATE_TYPES:
                    m = m | c.no_date
                missing[col.column] = m
                reject |= m
                counts.empty[col.column] += _blank_count(raw, None if col.type is ContractType.TEXT else c.present)
            if col.domain:
                distinct = pc.unique(raw)
                counts.domain_values.setdefault(col.column, set()).update(
                    v for v in distinct.to_pylist() if v != ""
                )
                not_mapped = pc.and_(pc.invert(pc.is_in(raw, value_set=self._domain_mapped[col.column])),
                                     pc.not_equal(raw, ""))  # raw values are never null
                unmapped |= np.asarray(not_mapped.to_numpy(zero_copy_only=False), dtype=bool)
        counts.unmapped_rows += int(unmapped.sum())
        keep = ~reject
        row_numbers = _contiguous(batch.column(ROW_NUMBER))
        keep_arrow = pa.array(keep, pa.bool_())

        # Kept rows: typed values, nullify errors.
        all_kept = bool(keep.all())
        kept_columns: list[pa.Array] = [row_numbers if all_kept else pc.filter(row_numbers, keep_arrow)]
        errors = []
        kept_violations: list[tuple[np.ndarray, tuple[str | None, str, str]]] = []
        for col in self.columns:
            typed = checked[col.column].typed
            kept_columns.append(typed if all_kept else pc.filter(typed, keep_arrow))
            if col.column in bad and self._severity[col.column] is Severity.NULLIFY:
                nullified = bad[col.column]
                no_date = checked[col.column].no_date
                if no_date is not None:
                    nullified = nullified & ~no_date
                nullified = nullified[keep]
                if nullified.any():
                    raw_kept = batch.column(col.column) if all_kept else pc.filter(batch.column(col.column), keep_arrow)
                    errors.append(self._errors(raw_kept, nullified, self._nullify_prefix[col.column]))
                    kept_violations.append((nullified, (col.column, _rule(col), Severity.NULLIFY.value)))
        kept_columns.append(self._join_errors(errors, int(keep.sum())))
        kept = pa.Table.from_arrays(kept_columns, schema=self.stg_schema)

        # Rejected rows: row text and every failing column.
        if reject.any():
            reject_arrow = pa.array(reject, pa.bool_())
            raws = [pc.filter(batch.column(c.column), reject_arrow) for c in self.columns]
            row_text = pc.binary_join_element_wise(*raws, ROW_TEXT_SEPARATOR)
            rejected_errors = []
            for col, raw_rejected in zip(self.columns, raws):
                if col.column in bad:
                    failing = bad[col.column][reject]
                    if failing.any():
                        rejected_errors.append(self._errors(raw_rejected, failing, self._type_prefix[col.column]))
                        counts.rule_violations[(col.column, _rule(col), self._severity[col.column].value)] += int(
                            failing.sum()
                        )
                if col.column in missing:
                    failing = missing[col.column][reject]
                    if failing.any():
                        rejected_errors.append(self._errors(raw_rejected, failing, self._required_prefix[col.column]))
                        counts.rule_violations[(col.column, "required", Severity.REJECT.value)] += int(failing.sum())
            rejects = pa.Table.from_arrays(
                [pc.filter(row_numbers, reject_arrow), row_text, self._join_errors(rejected_errors, int(reject.sum()))],
                schema=self.rejects_schema,
            )
        else:
            rejects = self.rejects_schema.empty_table()
        return TypedBlock(kept=kept, rejects=rejects, keep=keep, kept_violations=kept_violations)

    def _check_columns(self, batch: pa.RecordBatch | pa.Table) -> dict[str, Checked]:
        """Every column's check. The columns of a group (self._groups) are checked together: their values
        of the block concatenated, one set of compute calls over them, the results sliced back per column
        (zero-copy). Every rule of check_column is value by value, so this is the same as a check per
        column, but a block pays the calls' overhead once per group instead of once per column (typing
        and encoding 300k Appointments without Postgres, `python -m bench.typing --rows 300000`, median
        of 3: 4.30 s -> 3.09 s)."""
        n = batch.num_rows
        out: dict[str, Checked] = {}
        for col_type, names in self._groups:
            raws = [_contiguous(batch.column(name)) for name in names]
            if len(raws) == 1:
                out[names[0]] = check_column(col_type, raws[0], self._mapped.get(names[0]))
                continue
            c = check_column(col_type, pa.concat_arrays(raws))
            for i, name in enumerate(names):
                part = slice(i * n, (i + 1) * n)
                out[name] = Checked(v=c.v.slice(i * n, n), present=c.present[part], ok=c.ok[part],
                                    typed=c.typed.slice(i * n, n),
                                    no_date=None if c.no_date is None else c.no_date[part])
        return out

    @staticmethod
    def _errors(raw: pa.Array, failing: np.ndarray, prefix: str) -> pa.Array:
        """The JSON error object of each failing row (null elsewhere)."""
        if isinstance(raw, pa.ChunkedArray):
            raw = raw.combine_chunks()
        text = pc.binary_join_element_wise(prefix, _json_string(raw), "}", "")
        return pc.if_else(pa.array(failing, pa.bool_()), text, pa.scalar(None, pa.string()))

    @staticmethod
    def _join_errors(errors: list[pa.Array], n: int) -> pa.Array:
        """JSON arrays of the non-null error objects of each row; null for a row without any."""
        if not errors:
            return pa.nulls(n, pa.string())
        # (binary_join_element_wise's null_handling="skip" drops rows in pyarrow 26: joined pairwise)
        joined = errors[0]
        for e in errors[1:]:
            joined = pc.coalesce(pc.binary_join_element_wise(joined, e, ", "), joined, e)
        return pc.binary_join_element_wise("[", joined, "]", "")
