"""Planted faults: exactly where the record says, and what a correct reader does with them."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from worker.io.indici_reader import IndiciFormatError, IndiciReader
from worker.synth import FAULT_KINDS, FaultPlan, all_files, build_series
from worker.synth.faults import FATAL_FAULTS, NASTY_TEXT, READER_KIND, ROW_FAULTS

from .conftest import PRACTICES


def _key(spec, row):
    return tuple(row[spec.column_names.index(k)] for k in spec.natural_key)


def test_every_kind_is_planted_in_the_last_batch_only(faulty_series):
    kinds = Counter(x.kind for f in all_files(faulty_series) for x in f.faults)
    for kind in FAULT_KINDS:
        assert kinds[kind] >= 2, kind
    assert all(not f.faults for b in faulty_series[:-1] for f in b.files)


def test_at_most_one_fatal_fault_per_file(faulty_series):
    for f in all_files(faulty_series):
        assert sum(x.fatal for x in f.faults) <= 1


def test_reader_returns_intended_rows_or_the_planted_error(faulty_series):
    fatal_seen = Counter()
    for f in all_files(faulty_series):
        fatal = f.fatal_fault
        reader = IndiciReader([f.data[i:i + 4093] for i in range(0, len(f.data), 4093)], f.field_count)
        if fatal is None:
            assert list(reader.rows()) == f.rows, f.name
            continue
        with pytest.raises(IndiciFormatError) as info:
            list(reader.rows())
        assert info.value.kind == READER_KIND[fatal.kind], (f.name, fatal)
        assert info.value.row_number == fatal.row_number, (f.name, fatal, info.value.detail)
        fatal_seen[fatal.kind] += 1
    assert set(fatal_seen) == set(FATAL_FAULTS)


def test_rows_before_a_fatal_fault_are_the_intended_ones(faulty_series):
    for f in all_files(faulty_series):
        fatal = f.fatal_fault
        if fatal is None:
            continue
        got = []
        with pytest.raises(IndiciFormatError):
            for row in IndiciReader([f.data], f.field_count).rows():
                got.append(row)
        assert got == f.rows[: fatal.row_number - 1]


def test_row_level_faults_sit_where_recorded_and_keep_the_field_count(faulty_series, specs):
    for f in all_files(faulty_series):
        spec = specs[f.extract]
        for x in f.faults:
            if x.kind not in ROW_FAULTS:
                continue
            row = f.rows[x.row_number - 1]
            assert len(row) == spec.field_count
            if x.kind == "duplicate_key":
                continue
            assert row[spec.column_names.index(x.column)] == x.value, (f.name, x)


def test_fault_values(faulty_series, specs):
    tz = ZoneInfo("Pacific/Auckland")
    for f in all_files(faulty_series):
        spec = specs[f.extract]
        for x in f.faults:
            col = spec.column(x.column) if x.column and x.kind not in ("duplicate_key",) else None
            if x.kind == "bad_reference":
                assert x.value == "abc" and col.references
            elif x.kind == "missing_required":
                assert x.value == "" and col.required
                assert x.column == spec.id_column or (not spec.is_dimension and x.column == spec.core.main_date)
            elif x.kind == "unknown_domain_value":
                assert col.domain
            elif x.kind == "bad_timestamp":
                assert col.type.value == "timestamp_nz"
            elif x.kind == "impossible_date":
                with pytest.raises(ValueError):
                    datetime.strptime(x.value[:10], "%Y-%m-%d")
            elif x.kind == "invalid_nhi":
                from worker.synth.values import nhi_is_valid

                assert not nhi_is_valid(x.value) and x.value.startswith("Z")
            elif x.kind == "nasty_text":
                assert x.value in NASTY_TEXT and col.type.value == "text"
            elif x.kind == "dst_times":
                dt = datetime.fromisoformat(x.value).replace(tzinfo=tz)
                gap = dt.replace(fold=0).utcoffset() != dt.replace(fold=1).utcoffset()
                assert gap, x.value  # non-existent or ambiguous local time
            elif x.kind == "wrong_field_count":
                assert len(f.rows[x.row_number - 1]) in (spec.field_count - 1, spec.field_count + 1)
                assert int(x.value) == len(f.rows[x.row_number - 1])


def test_keys_unique_except_planted_duplicates(faulty_series, specs):
    dups = 0
    for f in all_files(faulty_series):
        spec = specs[f.extract]
        planted = {x.row_number for x in f.faults if x.kind == "duplicate_key"}
        blank = {x.row_number for x in f.faults if x.kind in ("missing_required", "wrong_field_count")}
        first: dict[tuple, int] = {}
        for n, r in enumerate(f.rows, 1):
            if n in blank:
                continue
            k = _key(spec, r)
            if k in first:
                assert n in planted, (f.name, n)
                earlier = f.rows[first[k] - 1]
                assert earlier != r, "a planted duplicate has different values"
                dups += 1
            else:
                assert n not in planted
                first[k] = n
    assert dups >= 2


def test_nasty_text_covers_the_hard_characters(faulty_series):
    values = {x.value for f in all_files(faulty_series) for x in f.faults if x.kind == "nasty_text"}
    joined = "".join(values)
    for ch in ("\r\n", "\n", "\t", "\\", '"', "|", "ā", "🌿"):
        assert ch in joined, repr(ch)


def test_fault_plan_rates_and_targets(specs):
    plan = FaultPlan(rates={"bad_reference": 0.1, "wrong_field_count": 1.0}, extracts=("Appointments",),
                     batches=(0,))
    batches = build_series(seed=4, patients=40, practices=PRACTICES, deltas=1, faults=plan)
    appts = [f for f in batches[0].files if f.extract == "Appointments"]
    assert all(f.fatal_fault is not None and f.fatal_fault.kind == "wrong_field_count" for f in appts)
    for f in appts:
        n = sum(x.kind == "bad_reference" for x in f.faults)
        assert n == round(0.1 * (len(f.rows))) or n == round(0.1 * (len(f.rows) - 0))
    others = [f for f in all_files(batches) if f not in appts]
    assert not any(f.faults for f in others)


def test_fault_plan_parsing():
    assert FaultPlan.parse(None) is None
    assert FaultPlan.parse("") is None
    assert FaultPlan.parse("bad_reference, bad_reference,nasty_text").counts == {"bad_reference": 2, "nasty_text": 1}
    assert FaultPlan.parse({"duplicate_key": 3}).counts == {"duplicate_key": 3}
    assert set(FaultPlan.parse(["all"]).counts) == set(FAULT_KINDS)
    with pytest.raises(ValueError):
        FaultPlan.parse(["no_such_fault"])


def test_faults_are_deterministic():
    a = build_series(seed=8, patients=20, practices=PRACTICES, deltas=1, faults=list(FAULT_KINDS))
    b = build_series(seed=8, patients=20, practices=PRACTICES, deltas=1, faults=list(FAULT_KINDS))
    assert [(f.name, f.faults, f.data) for f in all_files(a)] == [(f.name, f.faults, f.data) for f in all_files(b)]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16-le"])
def test_fatal_faults_with_bom_and_utf8(encoding):
    batches = build_series(seed=6, patients=20, practices=PRACTICES, deltas=0, encoding=encoding, bom=True,
                           faults=["invalid_utf16", "invalid_utf16", "truncated_last_row", "wrong_field_count"] * 2)
    fatal = [f for f in all_files(batches) if f.fatal_fault]
    assert len(fatal) >= 6
    for f in fatal:
        with pytest.raises(IndiciFormatError) as info:
            list(IndiciReader([f.data], f.field_count).rows())
        assert (info.value.kind, info.value.row_number) == (READER_KIND[f.fatal_fault.kind], f.fatal_fault.row_number)
