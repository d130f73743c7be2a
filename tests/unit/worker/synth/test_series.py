"""The clean series: shape, types, references, deltas, names, determinism, round trip through the reader."""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime

import pytest

from contracts.types import TYPE_RULES
from worker.io.indici_reader import IndiciReader
from worker.synth import all_files, build_series
from worker.synth.values import nhi_is_valid

from .conftest import PRACTICES

NAME = re.compile(
    r"^(?P<org>\d+)_(?P<practice>\d+)_(?P<token>[A-Za-z]+)_(?P<from>\d{12})_(?P<to>\d{12})_(?P<ext>\d{10})\.csv$"
)


def _key(spec, row):
    return tuple(row[spec.column_names.index(k)] for k in spec.natural_key)


def test_every_extract_and_practice_has_a_file_in_every_batch(clean_series, specs):
    assert [b.kind for b in clean_series] == ["full", "delta", "delta"]
    for batch in clean_series:
        got = Counter((f.extract, f.practice_key) for f in batch.files)
        want = {(e, p) for e in specs for p in PRACTICES}
        assert set(got) == want and set(got.values()) == {1}
        assert all(f.rows for f in batch.files), "every file carries at least one row"


def test_rows_have_field_count_fields_in_spec_order(clean_series, specs):
    for f in all_files(clean_series):
        spec = specs[f.extract]
        assert f.field_count == spec.field_count
        assert all(len(r) == spec.field_count for r in f.rows), f.name
        pid = spec.column_names.index("practice_id")
        org = spec.column_names.index("per_org_id")
        assert {r[pid] for r in f.rows} == {str(f.practice_id)}
        assert {r[org] for r in f.rows} == {str(f.per_org_id)}


def test_every_value_matches_its_type_pattern(clean_series, specs):
    bad = []
    for f in all_files(clean_series):
        spec = specs[f.extract]
        pats = [re.compile(TYPE_RULES[c.type].pattern) if TYPE_RULES[c.type].pattern else None for c in spec.columns]
        for r in f.rows:
            for c, p, v in zip(spec.columns, pats, r):
                if p is not None and v.strip() and not p.match(v.strip()):
                    bad.append((f.extract, c.column, v))
    assert not bad, bad[:10]


def test_values_look_like_indici(clean_series, specs):
    """Spot checks of the source's text conventions on the full batch."""
    seen = Counter()
    for f in clean_series[0].files:
        spec = specs[f.extract]
        for c_i, col in enumerate(spec.columns):
            vals = [r[c_i] for r in f.rows if r[c_i]]
            t = col.type.value
            if t == "timestamp_nz":
                assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{2}[037]", v) for v in vals), col.column
                seen["ts"] += len(vals)
            elif t == "money":
                assert all(re.fullmatch(r"-?(\d*[1-9]\d*|)\.\d{2}", v) for v in vals), col.column
                seen["dot00"] += sum(v == ".00" for v in vals)
            elif t == "boolean":
                assert set(vals) <= {"0", "1"}
            elif t == "uuid":
                assert all(v == v.upper() for v in vals)
            elif t == "date":
                seen["nodate"] += sum(v.startswith("1900-01-01") for v in vals)
            elif t == "double":
                seen["long_double"] += sum(len(v.replace("-", "").replace(".", "")) >= 15 for v in vals)
            elif t == "text":
                seen["plus64"] += sum(v.startswith("+64") for v in vals)
                seen["leading0"] += sum(v[:1] == "0" and v.isdigit() and len(v) > 1 for v in vals)
            empty = sum(1 for r in f.rows if r[c_i] == "")
            if not col.required and col.type.value == "text":
                seen["optional_empty"] += empty
    for k in ("ts", "dot00", "nodate", "long_double", "plus64", "leading0", "optional_empty"):
        assert seen[k] > 0, k


def test_patient_nhis_are_valid_and_unique(clean_series, specs):
    spec = specs["Patients"]
    i = spec.column_names.index("nhi_number")
    nhis = [r[i] for f in all_files(clean_series) if f.extract == "Patients" for r in f.rows]
    assert all(nhi_is_valid(n) and n.startswith("Z") for n in nhis)
    ids = spec.column_names.index("patient_id")
    by_patient = {}
    for f in all_files(clean_series):
        if f.extract == "Patients":
            for r in f.rows:
                by_patient.setdefault((f.practice_key, r[ids]), set()).add(r[i])
    assert all(len(v) == 1 for v in by_patient.values()), "a patient's NHI does not change between batches"
    firsts = [next(iter(v)) for v in by_patient.values()]
    assert len(set(firsts)) == len(firsts)


def test_references_exist_in_the_referenced_extract_of_the_same_practice(clean_series, specs):
    known: dict[tuple[str, tuple[int, int]], set[str]] = {}
    checked = 0
    for batch in clean_series:
        for f in batch.files:  # ids delivered so far, this batch included
            spec = specs[f.extract]
            i = spec.column_names.index(spec.id_column)
            known.setdefault((f.extract, f.practice_key), set()).update(r[i] for r in f.rows)
        for f in batch.files:
            spec = specs[f.extract]
            for j, col in enumerate(spec.columns):
                if not col.references:
                    continue
                target = known[(col.references, f.practice_key)]
                for r in f.rows:
                    if r[j]:
                        assert r[j] in target, (f.name, col.column, r[j])
                        checked += 1
    assert checked > 1000
    # each practice's ids are its own: a patient id of practice 535 is not one of 536
    a = known[("Patients", PRACTICES[0])]
    b = known[("Patients", PRACTICES[1])]
    assert a and b and not (a & b)


def test_children_agree_with_their_parent_fact(clean_series, specs):
    """Immunisations copy patient and provider from the appointment they belong to."""
    full = clean_series[0]
    appt = full.file("Appointments", PRACTICES[0])
    aspec = specs["Appointments"]
    by_id = {r[0]: r for r in appt.rows}
    ispec = specs["Immunisations"]
    imm = full.file("Immunisations", PRACTICES[0])
    ai, pi = ispec.column_names.index("appointment_id"), ispec.column_names.index("patient_id")
    matched = 0
    for r in imm.rows:
        if r[ai]:
            parent = by_id[r[ai]]
            if r[pi]:
                assert r[pi] == parent[aspec.column_names.index("patient_id")]
                matched += 1
    assert matched > 0


def test_keys_are_unique_within_each_file(clean_series, specs):
    for f in all_files(clean_series):
        spec = specs[f.extract]
        keys = [_key(spec, r) for r in f.rows]
        assert len(keys) == len(set(keys)), f.name


def test_file_names_parse_and_batches_share_date_extracted(clean_series, specs):
    prev_ext = None
    prev_to = None
    for batch in clean_series:
        exts = set()
        for f in batch.files:
            m = NAME.match(f.name)
            assert m, f.name
            assert (int(m["org"]), int(m["practice"])) == f.practice_key
            assert m["token"] in specs[f.extract].file_tokens
            assert datetime.strptime(m["from"], "%Y%m%d%H%M") == f.date_from == batch.date_from
            assert datetime.strptime(m["to"], "%Y%m%d%H%M") == f.date_to == batch.date_to
            assert datetime.strptime(m["ext"], "%y%m%d%H%M") == f.date_extracted
            exts.add(m["ext"])
        assert len(exts) == 1, "one DateExtracted per batch"
        assert batch.date_from < batch.date_to <= batch.date_extracted
        if prev_ext is not None:
            assert batch.date_extracted > prev_ext
            assert batch.date_extracted.weekday() == 6 and 11 <= batch.date_extracted.hour <= 13
            assert batch.date_from == prev_to, "delta windows are contiguous"
        prev_ext, prev_to = batch.date_extracted, batch.date_to
    names = [f.name for f in all_files(clean_series)]
    assert len(names) == len(set(names))


def _index(batches, specs, upto):
    """(extract, practice) -> key -> the newest row delivered in batches [0, upto)."""
    state = {}
    for b in batches[:upto]:
        for f in b.files:
            spec = specs[f.extract]
            d = state.setdefault((f.extract, f.practice_key), {})
            for r in f.rows:
                d[_key(spec, r)] = r
    return state


def test_deltas_update_facts_add_rows_and_change_tracked_dimension_attributes(clean_series, specs):
    for k in (1, 2):
        before = _index(clean_series, specs, k)
        delta = clean_series[k]
        updated_facts = new_rows = 0
        tracked_changes = Counter()
        for f in delta.files:
            spec = specs[f.extract]
            old = before[(f.extract, f.practice_key)]
            names = spec.column_names
            for r in f.rows:
                prev = old.get(_key(spec, r))
                if prev is None:
                    new_rows += 1
                    continue
                diff = {names[i] for i, (a, b) in enumerate(zip(prev, r)) if a != b}
                diff.discard("loaded_date_time")
                assert diff, f"{f.name}: a delta row repeats an unchanged row"
                if spec.is_dimension:
                    allowed = set(spec.core.tracked) | {"updated_at", "full_name"}  # full_name follows the names
                    assert diff <= allowed, (f.extract, diff - allowed)
                    tracked_changes[f.extract] += bool(diff & set(spec.core.tracked))
                else:
                    updated_facts += 1
                    assert not diff & set(spec.natural_key)
        assert updated_facts > 10 and new_rows > 10
        assert tracked_changes["Patients"] >= 2 and tracked_changes["Providers"] >= 1


def test_patient_changes_favour_surname_address_and_enrolment(clean_series, specs):
    spec = specs["Patients"]
    names = spec.column_names
    before = _index(clean_series, specs, 1)
    changed = Counter()
    for b in clean_series[1:]:
        for f in b.files:
            if f.extract != "Patients":
                continue
            for r in f.rows:
                prev = before[("Patients", f.practice_key)].get(_key(spec, r))
                if prev:
                    changed.update(names[i] for i, (a, c) in enumerate(zip(prev, r)) if a != c)
    assert changed["family_name"] + changed["permanent_address"] + changed["enrolment_status"] > 0
    assert changed["nhi_number"] == 0


def test_delta_updates_are_inside_their_window(clean_series, specs):
    for b in clean_series[1:]:
        lo = b.date_from.strftime("%Y-%m-%d %H:%M")
        hi = b.date_to.strftime("%Y-%m-%d %H:%M:59.999")
        for f in b.files:
            spec = specs[f.extract]
            if "updated_at" not in spec.column_names:
                continue
            i = spec.column_names.index("updated_at")
            for r in f.rows:
                assert r[i] and lo <= r[i] <= hi, (f.name, r[i])


def test_same_seed_same_bytes_other_seed_other_bytes():
    a = build_series(seed=3, patients=15, practices=PRACTICES[:1], deltas=1)
    b = build_series(seed=3, patients=15, practices=PRACTICES[:1], deltas=1)
    c = build_series(seed=4, patients=15, practices=PRACTICES[:1], deltas=1)
    fa, fb, fc = all_files(a), all_files(b), all_files(c)
    assert [f.name for f in fa] == [f.name for f in fb]
    assert [f.data for f in fa] == [f.data for f in fb]
    assert [f.data for f in fa] != [f.data for f in fc]
    assert sum(x.data != y.data for x, y in zip(fa, fc)) > len(fa) // 2


def test_patients_scale_the_other_extracts():
    small = build_series(seed=1, patients=20, practices=PRACTICES[:1], deltas=0)[0]
    big = build_series(seed=1, patients=80, practices=PRACTICES[:1], deltas=0)[0]
    assert len(small.file("Patients").rows) == 20 and len(big.file("Patients").rows) == 80
    n_appt = len(big.file("Appointments").rows)
    assert 3 * 80 <= n_appt <= 5 * 80
    assert len(big.file("PracticeInfo").rows) == 1


@pytest.mark.parametrize("encoding,bom", [("utf-16-le", False), ("utf-16-le", True), ("utf-8", False), ("utf-8", True)])
def test_round_trip_through_the_reader(encoding, bom, specs):
    batches = build_series(seed=9, patients=25, practices=PRACTICES, deltas=1, encoding=encoding, bom=bom)
    for f in all_files(batches):
        if encoding == "utf-16-le" and not bom:
            assert not f.data.startswith(b"\xff\xfe")
            assert f.data.endswith("|~~|".encode("utf-16-le"))
        reader = IndiciReader(iter([f.data[i:i + 997] for i in range(0, len(f.data), 997)]), f.field_count)
        assert list(reader.rows()) == f.rows, f.name
        assert reader.encoding == encoding and reader.bom is bom


def test_round_trip_of_the_clean_series(clean_series):
    for f in all_files(clean_series):
        assert list(IndiciReader([f.data], f.field_count).rows()) == f.rows


def test_extract_filter_limits_files_but_keeps_references(specs):
    batches = build_series(seed=2, patients=10, practices=PRACTICES[:1], deltas=1, extracts=["Appointments"])
    assert {f.extract for f in all_files(batches)} == {"Appointments"}
    with pytest.raises(KeyError):
        build_series(seed=2, patients=10, practices=PRACTICES[:1], deltas=0, extracts=["NoSuchExtract"])


def test_vary_tokens_uses_known_spellings(specs):
    batches = build_series(seed=2, patients=10, practices=PRACTICES[:1], deltas=3, vary_tokens=True)
    used = Counter()
    for f in all_files(batches):
        assert f.token in specs[f.extract].file_tokens
        used[f.token == specs[f.extract].file_tokens[0]] += 1
    assert used[False] > 0


def test_bytes_do_not_depend_on_the_process_hash_seed():
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import hashlib\n"
        "from worker.synth import build_series, all_files, FAULT_KINDS\n"
        "h = hashlib.sha256()\n"
        "for f in all_files(build_series(5, patients=12, deltas=1, faults=list(FAULT_KINDS))):\n"
        "    h.update(f.name.encode()); h.update(f.data)\n"
        "print(h.hexdigest())\n"
    )
    root = Path(__file__).resolve().parents[4]
    digests = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(root))
        out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                             check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1
