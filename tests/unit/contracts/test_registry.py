"""The extract contracts: they load, agree with the provider documentation and PRODUCT.md, and type the
published sample rows correctly."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from contracts.model import DimensionSpec, FactSpec, PiiClass
from contracts.registry import SPEC_DIR, load_all
from contracts.types import ContractType, rule_for

REPO_ROOT = Path(__file__).resolve().parents[3]
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "indici"
SAMPLE = FIXTURES / "685146_535_Patients_202508180544_202508190544_2508190850.csv"

# PRODUCT.md "Natural keys": the extract's own id column + practice_id + per_org_id
# (PracticeInfo: practice_id + per_org_id). Written out here on purpose, not read from the specs.
ID_COLUMNS = {
    "Allergies": "allergy_id",
    "AppointmentMedications": "medication_id",
    "Appointments": "appointment_id",
    "Diagnoses": "diagnosis_id",
    "Immunisations": "appointment_immunisation_id",
    "Inbox": "inbox_folder_item_id",
    "InboxDetail": "in_box_folder_item_in_line_id",
    "InvoiceDetail": "invoice_detail_id",
    "Invoices": "invoice_transaction_id",
    "Measurements": "screaning_id",
    "Medicine": "medicine_id",
    "NextOfKin": "nextto_kin_id",
    "PatientAlerts": "patient_alert_id",
    "Patients": "patient_id",
    "Providers": "provider_id",
    "Recalls": "re_call_id",
    "Vaccine": "vaccine_id",
}
EXPECTED_NATURAL_KEYS = {name: [col, "practice_id", "per_org_id"] for name, col in ID_COLUMNS.items()}
EXPECTED_NATURAL_KEYS["PracticeInfo"] = ["practice_id", "per_org_id"]

DIMENSIONS = {
    "Patients": "dim_patient",
    "Providers": "dim_provider",
    "PracticeInfo": "dim_practice",
    "Vaccine": "dim_vaccine",
    "Medicine": "dim_medicine",
}

# Columns named Is*/Has* that are deliberately not boolean, with the evidence.
NOT_BOOLEAN_FLAGS = {
    # The published Patients sample rows both carry 5: a code, not a 0/1 flag.
    ("Patients", "is_transfer_of_records"): ContractType.INTEGER,
}

# Sample values allowed to break their column's declared type: (column, value) -> reason. Keep empty
# unless a sample value is known to be bad data that the contract should nullify.
ALLOWED_SAMPLE_MISMATCHES: dict[tuple[str, str], str] = {}

GUID = re.compile(r"^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$")


def docs_dir() -> Path:
    configured = os.environ.get("INDICI_DOCS_DIR")
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "indici"


_DOCUMENTED: dict = {}


def load_documented() -> dict:
    """extracts.yaml of the provider documentation; a missing file FAILS the calling test."""
    path = docs_dir() / "extracts.yaml"
    if not path.is_file():
        pytest.fail(
            f"provider documentation not found at {path}: set INDICI_DOCS_DIR to the folder holding "
            "extracts.yaml (the contracts cannot be checked against it otherwise)",
            pytrace=False,
        )
    if str(path) not in _DOCUMENTED:
        _DOCUMENTED[str(path)] = yaml.safe_load(path.read_text(encoding="utf-8"))["extracts"]
    return _DOCUMENTED[str(path)]


@pytest.fixture(scope="module")
def specs():
    return load_all()


@pytest.fixture(scope="module")
def sample_rows() -> list[list[str]]:
    assert SAMPLE.is_file(), f"sample fixture missing: {SAMPLE}"
    text = SAMPLE.read_bytes().decode("utf-16-le")
    chunks = text.split("|~~|")
    assert chunks[-1].strip() == "", "the sample must end with the row terminator"
    return [chunk.split("|^^|") for chunk in chunks[:-1]]


# 1. loading ------------------------------------------------------------------------------------------
def test_all_18_specs_load(specs):
    assert sorted(specs) == sorted(EXPECTED_NATURAL_KEYS)
    assert len(specs) == 18
    for path in SPEC_DIR.glob("*.yaml"):
        assert path.stem in {s.table for s in specs.values()}, f"{path.name} is not named after its table"


# 2. agreement with the provider documentation ----------------------------------------------------------
def test_every_documented_extract_has_a_spec(specs):
    documented = load_documented()
    assert set(specs) == set(documented)


@pytest.mark.parametrize("extract", sorted(EXPECTED_NATURAL_KEYS))
def test_spec_matches_documentation(extract, specs):
    spec, doc = specs[extract], load_documented()[extract]
    assert spec.table == doc["table"]
    assert SPEC_DIR.joinpath(f"{doc['table']}.yaml").is_file()
    assert {t.lower() for t in spec.file_tokens} == {t.lower() for t in doc["file_tokens"]}
    assert spec.field_count == doc["column_count"] == len(doc["columns"])
    assert [c.source for c in spec.columns] == [c["source"] for c in doc["columns"]]
    assert spec.column_names == [c["column"] for c in doc["columns"]]


# 3. natural keys -------------------------------------------------------------------------------------
@pytest.mark.parametrize("extract", sorted(EXPECTED_NATURAL_KEYS))
def test_natural_key_is_the_documented_one(extract, specs):
    spec = specs[extract]
    assert spec.natural_key == EXPECTED_NATURAL_KEYS[extract]
    for name in spec.natural_key:
        col = spec.column(name)
        assert col.required, f"{extract}.{name} is a key column and must be required"
        assert col.type is ContractType.BIGINT, f"{extract}.{name} is a key column and must be bigint"
        assert col.references is None, f"{extract}.{name} is a key column and must not be a reference"


def test_core_roles(specs):
    for name, spec in specs.items():
        if name in DIMENSIONS:
            assert isinstance(spec.core, DimensionSpec), name
            assert spec.core.table == DIMENSIONS[name]
            assert spec.core.tracked, f"{name}: a dimension must track some attributes"
            assert not set(spec.core.tracked) & set(spec.natural_key), f"{name}: key columns are not tracked"
            volatile = {"updated_at", "updated_by", "loaded_date_time", "inserted_by", "inserted_at"}
            assert not set(spec.core.tracked) & volatile, f"{name}: audit columns must not open versions"
        else:
            assert isinstance(spec.core, FactSpec), name
            assert spec.core.table.startswith("fact_"), name
    assert specs["Appointments"].core.main_date == "schedule_date"


# 4. PII, references, main dates ------------------------------------------------------------------------
def test_nhi_columns_are_pii_nhi(specs):
    found = []
    for name, spec in specs.items():
        for col in spec.columns:
            if col.source.upper() == "NHINUMBER" or col.column == "nhi_number":
                assert col.pii is PiiClass.NHI, f"{name}.{col.column} holds an NHI"
                assert col.type is ContractType.TEXT
                found.append(name)
            elif col.pii is PiiClass.NHI:
                pytest.fail(f"{name}.{col.column} is classed nhi but is not an NHI column")
    assert {"Patients", "NextOfKin", "Providers"} <= set(found)


def test_date_of_birth_and_names_are_personal(specs):
    patients = specs["Patients"]
    assert patients.column("dob").pii is PiiClass.BIRTH_DATE
    for name in ("first_name", "family_name", "full_name"):
        assert patients.column(name).pii is PiiClass.NAME
    for name in ("cell_number", "email"):
        assert patients.column(name).pii is PiiClass.CONTACT
    for name in ("permanent_address", "permanent_address_postal_code", "permanent_address_suburb"):
        assert patients.column(name).pii is PiiClass.ADDRESS
    assert patients.column("notes").pii is PiiClass.FREE_TEXT


def test_references_point_at_existing_extracts(specs):
    for name, spec in specs.items():
        for col in spec.columns:
            if col.references is None:
                continue
            assert col.references in specs, f"{name}.{col.column} references unknown {col.references}"
            assert col.references != name, f"{name}.{col.column} references its own extract"
            assert col.column not in spec.natural_key and col.column != "practice_id"
            assert col.type in (ContractType.BIGINT, ContractType.INTEGER)
            target = specs[col.references]
            assert col.column == target.id_column, (
                f"{name}.{col.column} references {col.references}, whose id column is {target.id_column}"
            )


def test_every_fact_patient_id_references_patients(specs):
    for name, spec in specs.items():
        if name != "Patients" and "patient_id" in spec.column_names:
            assert spec.column("patient_id").references == "Patients", name


@pytest.mark.parametrize("extract", sorted(set(EXPECTED_NATURAL_KEYS) - set(DIMENSIONS)))
def test_fact_main_date_is_required(extract, specs):
    spec = specs[extract]
    main = spec.column(spec.core.main_date)
    assert main.required
    assert main.type in (ContractType.DATE, ContractType.TIMESTAMP_NZ)


def test_flags_named_is_or_has_are_boolean(specs):
    for name, spec in specs.items():
        for col in spec.columns:
            if re.match(r"^(Is|Has)[A-Z0-9]", col.source):
                expected = NOT_BOOLEAN_FLAGS.get((name, col.column), ContractType.BOOLEAN)
                assert col.type is expected, f"{name}.{col.column} should be {expected.value}"


def test_only_required_columns_are_keys_and_main_dates(specs):
    for name, spec in specs.items():
        allowed = set(spec.natural_key)
        if isinstance(spec.core, FactSpec):
            allowed.add(spec.core.main_date)
        extra = [c.column for c in spec.columns if c.required and c.column not in allowed]
        assert not extra, f"{name}: unexpected required columns {extra}"


# 5. the published sample rows --------------------------------------------------------------------------
def test_sample_fixture_is_the_published_file():
    load_documented()  # fails clearly when the documentation folder is missing
    published = docs_dir() / "samples" / SAMPLE.name
    assert published.is_file(), f"published sample missing: {published}"
    assert SAMPLE.read_bytes() == published.read_bytes(), "the fixture must be the published file, byte for byte"


def test_sample_splits_into_two_rows_of_220_fields(sample_rows, specs):
    assert len(sample_rows) == 2
    assert [len(r) for r in sample_rows] == [220, 220]
    assert specs["Patients"].field_count == 220


def test_sample_values_match_their_declared_types(sample_rows, specs):
    spec = specs["Patients"]
    mismatches = []
    for number, row in enumerate(sample_rows, start=1):
        for col, value in zip(spec.columns, row, strict=True):
            trimmed = value.strip()
            if trimmed == "":
                assert not col.required, f"row {number}: required column {col.column} is empty"
                continue
            pattern = rule_for(col.type).pattern
            if pattern is None or re.match(pattern, trimmed):
                continue
            if (col.column, trimmed) in ALLOWED_SAMPLE_MISMATCHES:
                continue
            mismatches.append(f"row {number} {col.column} ({col.type.value}): {value!r}")
    assert not mismatches, "sample values that do not match their column type:\n" + "\n".join(mismatches)


def test_sample_guid_and_code_columns(sample_rows, specs):
    """GUID-looking values are uuid; codes with leading zeros or + stay text (they would lose them)."""
    spec = specs["Patients"]
    for row in sample_rows:
        for col, value in zip(spec.columns, row, strict=True):
            v = value.strip()
            if GUID.match(v):
                assert col.type is ContractType.UUID, f"{col.column} holds GUIDs"
            if re.match(r"^(\+|0)[0-9]+$", v) and v != "0":
                assert col.type is ContractType.TEXT, f"{col.column} value {v!r} would lose its prefix"
    assert spec.column("is_transfer_of_records").type is ContractType.INTEGER
    assert spec.column("permanent_address_dhb_code").type is ContractType.TEXT
    assert spec.column("permanent_address_latitude").type is ContractType.DOUBLE
    assert spec.column("calculated_balance").type is ContractType.MONEY


# the drafting aid ----------------------------------------------------------------------------------
def test_draft_tool_never_writes_into_the_spec_dir(tmp_path):
    load_documented()
    from contracts.tools import draft_specs

    before = {p.name: p.read_bytes() for p in SPEC_DIR.glob("*.yaml")}
    assert draft_specs.main([str(SPEC_DIR), "--docs", str(docs_dir())]) == 2
    assert {p.name: p.read_bytes() for p in SPEC_DIR.glob("*.yaml")} == before
    assert draft_specs.main([str(tmp_path), "--docs", str(docs_dir()), "--extract", "Patients"]) == 0
    draft = yaml.safe_load((tmp_path / "patients.yaml").read_text(encoding="utf-8"))
    assert len(draft["columns"]) == 220
