"""Value generators: NHI check rule, formats, DST avoidance."""

from __future__ import annotations

import re
from datetime import datetime
from random import Random
from zoneinfo import ZoneInfo

import pytest

from contracts.registry import load_all
from contracts.types import TYPE_RULES, ContractType
from worker.synth import values as V

# from /work/shared/indici/README.md ("NZ identifiers")
README_VALID = ["JBX3656", "ZZZ0016", "ZAC5361", "WLD9413", "ZZZ0121", "ZBN77VL", "ZZZ00AC", "ZSC21TN", "ZVB97XQ"]
README_INVALID = ["ZZZ0044", "DAB8233", "JBX3650", "LAA5555", "ZZZ00AA", "ZZZ00AY", "ZVU27KA", "ZVU27KZ"]


@pytest.mark.parametrize("nhi", README_VALID)
def test_readme_valid_nhis(nhi):
    assert V.nhi_is_valid(nhi)
    assert V.nhi_is_valid(f"  {nhi.lower()} ")  # normalised with trim and upper-case


@pytest.mark.parametrize("nhi", README_INVALID)
def test_readme_invalid_nhis(nhi):
    assert not V.nhi_is_valid(nhi)


@pytest.mark.parametrize("junk", ["", None, "ZZZ001", "ZZZ00160", "ZIO0016", "1234567", "ZZZ-016"])
def test_malformed_nhis_are_invalid(junk):
    assert not V.nhi_is_valid(junk)


def test_generated_nhis_are_valid_test_range_and_unique():
    rng = Random(3)
    nhis = V.unique_nhis(rng, 5000)
    assert len(set(nhis)) == 5000
    assert all(n.startswith("Z") and V.nhi_is_valid(n) for n in nhis)
    assert any(n[3:5].isdigit() and n[5].isalpha() for n in nhis)  # new format present
    assert any(n[3:].isdigit() for n in nhis)  # old format present
    bad = [V.make_invalid_nhi(rng) for _ in range(500)]
    assert not any(V.nhi_is_valid(b) for b in bad)


def test_money_and_double_formats():
    assert V.fmt_money(0) == ".00"
    assert V.fmt_money(1850) == "18.50"
    assert V.fmt_money(5) == ".05"
    assert V.fmt_money(-320) == "-3.20"
    assert V.fmt_double(-36.882535) == "-36.882534999999997"
    assert V.fmt_uuid(0xABCDEF) == "00000000-0000-0000-0000-000000ABCDEF"


def test_timestamps_look_like_indici_and_skip_dst_hours():
    rng = Random(1)
    back, fwd = V.dst_transition_dates(2025)
    assert (back.isoformat(), fwd.isoformat()) == ("2025-04-06", "2025-09-28")
    # every second of both transition days
    secs = [V.to_secs(datetime(d.year, d.month, d.day)) + s for d in (back, fwd) for s in range(0, 86400, 7)]
    out = V.ts_vec(rng, secs)
    pat = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{2}[037]$")
    assert all(pat.match(v) for v in out)
    assert not any(v[11:13] == "02" for v in out)
    tz = ZoneInfo("Pacific/Auckland")
    for v in out[::97]:
        dt = datetime.fromisoformat(v).replace(tzinfo=tz)
        # neither ambiguous nor non-existent: both folds give the same instant
        assert dt.replace(fold=0).utcoffset() == dt.replace(fold=1).utcoffset()


def test_pool256_shares():
    pool = V.pool256(["a", "b"], empty=0.25, weights=[3, 1])
    assert len(pool) == 256
    assert pool.count("") == 64
    assert pool.count("a") > pool.count("b") > 0


@pytest.mark.parametrize("extract", sorted(load_all()))
def test_mutate_value_changes_and_keeps_type(extract):
    spec = load_all()[extract]
    rng = Random(2)
    for col in spec.columns:
        for old in ("", "1", "2025-02-11", "2025-01-29 18:18:11.347", "18.50", "Registered"):
            pattern = TYPE_RULES[col.type].pattern
            if pattern and old and not re.match(pattern, old):
                continue
            new = V.mutate_value(spec, col, old, rng)
            assert new != old, (col.column, old)
            if pattern and col.type is not ContractType.TEXT:
                assert re.match(pattern, new.strip()), (col.column, old, new)
