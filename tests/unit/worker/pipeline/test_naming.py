"""Tests of the S3 key / file-name parser (worker/pipeline/naming.py), from the README's examples."""
from __future__ import annotations

import pickle
from datetime import datetime

import pytest

from worker.pipeline.naming import ParsedName, UnparseableKey, parse_key

# the file_tokens of the documented extracts (extracts.yaml), lower-cased -> extract name
TOKENS = {
    t.lower(): name
    for name, toks in {
        "Allergies": ["Allergies", "Allergy"],
        "AppointmentMedications": ["AppointmentMedications", "AppointmentMedicaitons", "AppointmentMedication"],
        "Appointments": ["Appointments", "Appointment"],
        "Diagnoses": ["Diagnoses", "Diagnosis"],
        "Immunisations": ["Immunisations", "Immunisation"],
        "Inbox": ["Inbox"],
        "InboxDetail": ["InboxDetail", "InboxDetails"],
        "InvoiceDetail": ["InvoiceDetail", "InvoiceDetails"],
        "Invoices": ["Invoices", "Invoice"],
        "Measurements": ["Measurements", "Measurement"],
        "Medicine": ["Medicine", "Medicines"],
        "NextOfKin": ["NextOfKin", "NextofKin"],
        "PatientAlerts": ["PatientAlerts", "PatientAlert"],
        "Patients": ["Patients", "Patient"],
        "PracticeInfo": ["PracticeInfo"],
        "Providers": ["Providers", "Provider"],
        "Recalls": ["Recalls", "Recall"],
        "Vaccine": ["Vaccine", "Vaccines"],
    }.items()
    for t in toks
}

README_NAME = "685146_535_Patients_202508180544_202508190544_2508190850.csv"
COMPACT = "685146545Appointments2025081805442025081905442508190850"


def unparseable(key, *, known=()) -> str:
    with pytest.raises(UnparseableKey) as ei:
        parse_key(key, TOKENS, known)
    assert ei.value.key == key
    assert isinstance(ei.value, ValueError)
    return ei.value.reason


# ---------------------------------------------------------------- underscore form
def test_readme_example():
    p = parse_key(README_NAME, TOKENS)
    assert p == ParsedName(
        key=README_NAME,
        file_name=README_NAME,
        extract_token="Patients",
        extract="Patients",
        per_org_id=685146,
        practice_id=535,
        date_from=datetime(2025, 8, 18, 5, 44),
        date_to=datetime(2025, 8, 19, 5, 44),
        date_extracted=datetime(2025, 8, 19, 8, 50),
        compact=False,
    )


@pytest.mark.parametrize("ext", [".csv", ".CSV", ".Csv", ""])
def test_extensions(ext):
    name = README_NAME[: -len(".csv")] + ext
    p = parse_key(name, TOKENS)
    assert p.file_name == name and p.extract == "Patients" and p.per_org_id == 685146 and p.practice_id == 535


@pytest.mark.parametrize(
    "prefix",
    [
        "C:\\Jobs\\indici_export\\ebpha_poutiri\\working\\",
        "indici/2025/08/19/",
        "/leading/slash/",
        "mixed/C:\\Jobs\\x\\",
    ],
)
def test_folder_prefixes_are_stripped(prefix):
    key = prefix + README_NAME
    p = parse_key(key, TOKENS)
    assert p.key == key
    assert p.file_name == README_NAME
    assert (p.per_org_id, p.practice_id, p.extract) == (685146, 535, "Patients")


@pytest.mark.parametrize(
    "token,extract",
    [
        ("NextofKin", "NextOfKin"),
        ("NextOfKin", "NextOfKin"),
        ("NEXTOFKIN", "NextOfKin"),
        ("Diagnosis", "Diagnoses"),
        ("Diagnoses", "Diagnoses"),
        ("Patient", "Patients"),
        ("AppointmentMedicaitons", "AppointmentMedications"),
        ("AppointmentMedications", "AppointmentMedications"),
        ("AppointmentMedication", "AppointmentMedications"),
        ("Appointments", "Appointments"),
        ("Appointment", "Appointments"),
        ("appointments", "Appointments"),
        ("InboxDetails", "InboxDetail"),
        ("Inbox", "Inbox"),
        ("InvoiceDetail", "InvoiceDetail"),
        ("Invoice", "Invoices"),
        ("PatientAlerts", "PatientAlerts"),
        ("Vaccines", "Vaccine"),
    ],
)
def test_token_spellings(token, extract):
    for name in (
        f"685146_535_{token}_202508180544_202508190544_2508190850.csv",
        f"685146535{token}2025081805442025081905442508190850",
    ):
        p = parse_key(name, TOKENS, known_per_org_ids=[685146])
        assert p.extract_token == token
        assert p.extract == extract


def test_tokens_mapping_keys_are_matched_case_insensitively_even_if_not_lowercased():
    p = parse_key(README_NAME, {"Patients": "Patients"})
    assert p.extract == "Patients"


def test_other_organisations_and_practices_are_not_hard_coded():
    p = parse_key("1_2_Recalls_202401010000_202401010000_2401010000", TOKENS)
    assert (p.per_org_id, p.practice_id, p.extract) == (1, 2, "Recalls")
    assert p.date_from == p.date_to == datetime(2024, 1, 1)


# ---------------------------------------------------------------- compact form
def test_compact_without_known_per_org_id():
    p = parse_key(COMPACT, TOKENS)
    assert p.compact is True
    assert p.per_org_id is None and p.practice_id is None
    assert p.extract_token == "Appointments" and p.extract == "Appointments"
    assert p.date_from == datetime(2025, 8, 18, 5, 44)
    assert p.date_to == datetime(2025, 8, 19, 5, 44)
    assert p.date_extracted == datetime(2025, 8, 19, 8, 50)


def test_compact_with_known_per_org_id():
    p = parse_key(COMPACT, TOKENS, known_per_org_ids={685146, 999})
    assert p.compact is True
    assert (p.per_org_id, p.practice_id) == (685146, 545)
    assert p.extract == "Appointments"


def test_compact_with_windows_prefix_and_extension():
    key = "C:\\Jobs\\indici_export\\" + COMPACT + ".CSV"
    p = parse_key(key, TOKENS, known_per_org_ids=[685146])
    assert p.file_name == COMPACT + ".CSV" and (p.per_org_id, p.practice_id) == (685146, 545)


def test_compact_ambiguous_or_empty_practice_stays_unsplit():
    # two known ids are prefixes of the digits: ambiguous
    p = parse_key(COMPACT, TOKENS, known_per_org_ids=[685146, 68514])
    assert (p.per_org_id, p.practice_id) == (None, None)
    # the known id is all the digits: no practice id left
    p = parse_key("685146Appointments2025081805442025081905442508190850", TOKENS, known_per_org_ids=[685146])
    assert (p.per_org_id, p.practice_id) == (None, None)
    # no digits at all
    p = parse_key("Appointments2025081805442025081905442508190850", TOKENS, known_per_org_ids=[685146])
    assert (p.per_org_id, p.practice_id) == (None, None) and p.compact


def test_longest_token_wins_in_compact_form():
    p = parse_key("685146545AppointmentMedications2025081805442025081905442508190850", TOKENS, [685146])
    assert p.extract_token == "AppointmentMedications" and p.extract == "AppointmentMedications"
    p = parse_key("685146545PatientAlerts2025081805442025081905442508190850", TOKENS, [685146])
    assert p.extract == "PatientAlerts"


# ---------------------------------------------------------------- unparseable keys
@pytest.mark.parametrize(
    "key,needle",
    [
        ("685146_535_Patients_202513180544_202508190544_2508190850.csv", "DateFrom '202513180544'"),
        ("685146_535_Patients_202508180544_202502300544_2508190850.csv", "DateTo '202502300544'"),
        ("685146_535_Patients_202508180544_202508192400_2508190850.csv", "DateTo '202508192400'"),
        ("685146_535_Patients_202508180544_202508190560_2508190850.csv", "DateTo '202508190560'"),
        ("685146_535_Patients_202508180544_202508190544_2513190850.csv", "DateExtracted '2513190850'"),
        ("685146_535_Patients_202508200544_202508190544_2508190850.csv", "after DateTo"),
        ("685146_535_Patients_20250818054_202508190544_2508190850.csv", "DateFrom '20250818054' is not 12 digits"),
        ("685146_535_Patients_202508180544_202508190544_25081908.csv", "DateExtracted '25081908'"),
        ("685146545Appointments2025081805442025023005442508190850", "DateTo '202502300544'"),
    ],
)
def test_invalid_dates(key, needle):
    assert needle in unparseable(key)


def test_invalid_date_reason_is_readable():
    reason = unparseable("685146_535_Patients_202508180544_202513010000_2508190850.csv")
    assert reason.startswith("DateTo '202513010000' is not a valid yyyyMMddHHmm date")


@pytest.mark.parametrize(
    "key",
    [
        "685146_535_Widgets_202508180544_202508190544_2508190850.csv",
        "685146_535__202508180544_202508190544_2508190850.csv",
        "685146545Widgets2025081805442025081905442508190850",
        "6851465452025081805442025081905442508190850",
        "685146_535_202508180544_202508190544_2508190850_x.csv",
    ],
)
def test_missing_or_unknown_token(key):
    assert "no extract type token" in unparseable(key)


@pytest.mark.parametrize(
    "key,needle",
    [
        ("indici/2025/08/", "folder"),
        ("C:\\Jobs\\indici_export\\", "folder"),
        ("", "folder"),
        ("README.txt", "extension"),
        ("685146_535_Patients_202508180544_202508190544_2508190850.csv.gz", "extension '.csv.gz'"),
        ("685146_535_Patients_202508180544_202508190544_2508190850.txt", "extension '.txt'"),
        ("garbage", "no extract type token: 'garbage'"),
        ("!!!", "no extract type token"),
        (".csv", "empty file name"),
        ("685146_535_Patients.csv", "expected 6 '_'-separated parts"),
        ("685146_535_Patients_202508180544_202508190544_2508190850_copy.csv", "found 7"),
        ("ABC_535_Patients_202508180544_202508190544_2508190850.csv", "PerOrgID 'ABC'"),
        ("685146_x_Patients_202508180544_202508190544_2508190850.csv", "PracticeID 'x'"),
        ("685146545Appointments20250818054420250819054425081908", "expected 34 digits"),
        ("685146545Appointments2025081805442025081905442508190850 ", "34 digits"),
        ("685146_535_Patients_٢٠٢٥08180544_202508190544_2508190850.csv", "DateFrom"),
    ],
)
def test_garbage_keys_are_unparseable_not_crashes(key, needle):
    reason = unparseable(key)
    assert needle in reason, reason


def test_non_string_key():
    with pytest.raises(UnparseableKey):
        parse_key(None, TOKENS)  # type: ignore[arg-type]


def test_unparseable_key_message_and_pickle():
    with pytest.raises(UnparseableKey) as ei:
        parse_key("garbage", TOKENS)
    e = ei.value
    assert "garbage" in str(e) and e.reason in str(e)
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.key, e2.reason) == (e.key, e.reason)


def test_parsed_name_is_frozen():
    p = parse_key(README_NAME, TOKENS)
    with pytest.raises(Exception):
        p.per_org_id = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "key,needle",
    [
        ("xx685146545Appointments2025081805442025081905442508190850", "unexpected 'xx685146545' before the extract type"),
        ("685146545Appointments2025081805442025081905442508190850-1", "followed by '-1'"),
    ],
)
def test_compact_reasons(key, needle):
    assert needle in unparseable(key)
