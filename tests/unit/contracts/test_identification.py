"""The contracts' de-identification classes: derived from pii, only ever made stricter, coarsening rules."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from contracts.model import ColumnSpec, Identification, PiiClass
from contracts.registry import load_all


def _col(**values) -> ColumnSpec:
    return ColumnSpec(**{"source": "X", "column": "x", "type": "text", **values})


@pytest.mark.parametrize("pii, expected", [
    ("none", "none"), ("nhi", "direct"), ("name", "direct"), ("contact", "direct"), ("address", "direct"),
    ("birth_date", "quasi"), ("free_text", "direct"),
])
def test_identification_derives_from_the_pii_class(pii, expected):
    column = _col(pii=pii, type="date" if pii == "birth_date" else "text")
    assert column.identification is Identification(expected)


def test_a_column_may_be_made_stricter_but_never_weaker():
    assert _col(identifies="direct").identification is Identification.DIRECT
    assert _col(type="date", pii="birth_date", identifies="direct").identification is Identification.DIRECT
    with pytest.raises(ValidationError, match="weaker"):
        _col(pii="name", identifies="quasi")
    with pytest.raises(ValidationError, match="weaker"):
        _col(pii="contact", identifies="none")


def test_coarsening_rules():
    assert _col(type="date", pii="birth_date").coarsening.value == "year"  # birth dates: year by default
    assert _col(type="date", identifies="quasi", coarsen="year").coarsening.value == "year"
    assert _col(identifies="quasi").coarsening is None  # withheld entirely
    with pytest.raises(ValidationError, match="only a quasi identifier"):
        _col(type="date", coarsen="year")
    with pytest.raises(ValidationError, match="needs a date"):
        _col(identifies="quasi", coarsen="year")


def test_the_specs_classify_what_issue_10_lists():
    specs = load_all()
    patients = specs["Patients"]
    for name in ("first_name", "family_name", "nhi_number", "email", "cell_number", "permanent_address",
                 "chart_number", "health_card_no", "community_service_card_no"):
        assert patients.column(name).identification is Identification.DIRECT, name
    for name in ("dob", "death_date", "permanent_address_meshblock"):
        assert patients.column(name).identification is Identification.QUASI, name
    assert patients.column("dob").coarsening is not None and patients.column("death_date").coarsening is not None
    for name in ("permanent_address_domicile_code", "gender", "ethcode", "age_group"):
        assert patients.column(name).identification is Identification.NONE, name
    assert specs["Allergies"].column("patient").identification is Identification.DIRECT
    assert specs["Inbox"].column("patient_name").identification is Identification.DIRECT


def test_every_personal_column_identifies():
    for spec in load_all().values():
        for col in spec.columns:
            if col.pii is not PiiClass.NONE:
                assert col.identification is not Identification.NONE, f"{spec.extract}.{col.column}"
