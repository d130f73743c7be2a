"""Staging and bad input: every kind of bad row or file gets a clear error and loses nothing else.

Data comes from the project's generator with planted faults; what each fault must do is read from the
contract (the column's severity), not from the staging code.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from psycopg import sql

from contracts.model import Severity
from contracts.registry import get as get_spec
from contracts.types import ContractType
from tests.integration.worker.pipeline.helpers import put_file, query, run
from worker.io.s3 import make_client
from worker.synth import build_series
from worker.synth.faults import FaultPlan

pytestmark = pytest.mark.integration

APPOINTMENTS = get_spec("Appointments")
PRACTICE = [(685146, 535)]


def _appointments_file(faults: dict[str, int], seed: int = 11, patients: int = 40):
    plan = FaultPlan(counts=faults, extracts=("Appointments",), batches=(0,))
    (batch,) = build_series(seed=seed, patients=patients, practices=PRACTICE, deltas=0, faults=plan,
                            extracts=["Appointments"])
    (generated,) = batch.files
    return generated


def _load(settings, generated) -> dict:
    put_file(make_client(settings), settings.s3_bucket, generated.name, generated.data)
    return run(settings)


def _stg_rows(settings, spec, columns: list[str]) -> dict[int, tuple]:
    statement = sql.SQL("SELECT row_number, field_errors, {} FROM {}").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns), sql.Identifier("stg", spec.table)
    )
    return {r[0]: r[1:] for r in query(settings, statement)}


def _rejects(settings, spec) -> dict[int, tuple]:
    statement = sql.SQL("SELECT row_number, row_text, field_errors FROM {}").format(
        sql.Identifier("etl", f"rejects_{spec.table}")
    )
    return {r[0]: r[1:] for r in query(settings, statement)}


def _has_error(errors, column: str, rule: str | None = None, value: str | None = None) -> bool:
    return any(
        e.get("column") == column and (rule is None or e["rule"] == rule) and (value is None or e["value"] == value)
        for e in errors or []
    )


def _assert_reconciled(settings, generated) -> None:
    (row,) = query(
        settings, "SELECT rows_read, rows_raw, rows_staged, rows_rejected, rows_superseded FROM etl.load_run_files"
    )
    read, raw, staged, rejected, superseded = row
    assert read == raw == len(generated.rows)
    # Every row of the file is staged or in its rejects table (superseded duplicates included).
    assert staged + rejected == read and rejected >= superseded
    counts = query(
        settings,
        "SELECT (SELECT count(*) FROM stg.appointments), (SELECT count(*) FROM etl.rejects_appointments)",
    )[0]
    assert counts == (staged, rejected)  # rows_rejected counts every row in the rejects table


@pytest.mark.parametrize("kind", ["bad_timestamp", "impossible_date", "missing_required", "bad_reference"])
def test_bad_value_is_rejected_or_nullified_as_the_contract_says(pipeline_settings, kind):
    generated = _appointments_file({kind: 3})
    planted = [f for f in generated.faults if f.kind == kind]
    assert planted, "the generator planted nothing"
    summary = _load(pipeline_settings, generated)
    assert summary["by_status"] == {"merged": 1}, summary
    _assert_reconciled(pipeline_settings, generated)

    stg = _stg_rows(pipeline_settings, APPOINTMENTS, [f.column for f in planted])
    rejects = _rejects(pipeline_settings, APPOINTMENTS)
    faulty_rows = {f.row_number for f in planted}
    for fault in planted:
        column = APPOINTMENTS.column(fault.column)
        rule = "required" if kind == "missing_required" else None
        if APPOINTMENTS.severity(column) is Severity.REJECT or kind == "missing_required":
            assert fault.row_number in rejects, f"row {fault.row_number} ({fault.column}) was not rejected"
            row_text, errors = rejects[fault.row_number]
            assert row_text == "|^^|".join(generated.rows[fault.row_number - 1])
            assert _has_error(errors, fault.column, rule, None if kind == "missing_required" else fault.value)
            assert fault.row_number not in stg
        else:
            index = [f.column for f in planted].index(fault.column)
            errors, *values = stg[fault.row_number]
            assert values[index] is None
            assert _has_error(errors, fault.column, value=fault.value)
    # Nothing else was lost: every other row is staged.
    others = set(range(1, len(generated.rows) + 1)) - faulty_rows
    assert others <= set(stg)


def test_every_failing_column_of_a_row_is_listed(pipeline_settings):
    generated = _appointments_file({})
    row = list(generated.rows[4])
    names = APPOINTMENTS.column_names
    bad = {"appointment_id": "12x", "schedule_date": "2025-02-30 10:00:00.000", "patient_id": "abc"}
    nullable = [c for c in APPOINTMENTS.columns
                if c.type is ContractType.TIMESTAMP_NZ and APPOINTMENTS.severity(c) is Severity.NULLIFY][0]
    bad[nullable.column] = "yesterday"
    for column, value in bad.items():
        row[names.index(column)] = value
    generated.rows[4] = row
    generated.data = generated.encode()
    _load(pipeline_settings, generated)
    _, errors = _rejects(pipeline_settings, APPOINTMENTS)[5]
    for column, value in bad.items():
        assert _has_error(errors, column, value=value), (column, errors)


def test_duplicate_key_keeps_the_last_row_and_records_the_others(pipeline_settings):
    generated = _appointments_file({"duplicate_key": 2})
    planted = [f for f in generated.faults if f.kind == "duplicate_key"]
    _load(pipeline_settings, generated)
    _assert_reconciled(pipeline_settings, generated)
    key_index = [APPOINTMENTS.column_names.index(k) for k in APPOINTMENTS.natural_key]
    by_key: dict[tuple, list[int]] = {}
    for number, row in enumerate(generated.rows, 1):
        by_key.setdefault(tuple(row[i] for i in key_index), []).append(number)
    repeated = {k: v for k, v in by_key.items() if len(v) > 1}
    assert len(repeated) >= len(planted) > 0
    stg = _stg_rows(pipeline_settings, APPOINTMENTS, ["appointment_id"])
    rejects = _rejects(pipeline_settings, APPOINTMENTS)
    for numbers in repeated.values():
        assert numbers[-1] in stg
        for earlier in numbers[:-1]:
            assert earlier not in stg
            errors = rejects[earlier][1]
            assert errors[0]["rule"] == "duplicate_key" and errors[0]["superseded_by_row"] == numbers[-1]


def test_unknown_domain_value_is_kept_added_and_reported(pipeline_settings):
    generated = _appointments_file({"unknown_domain_value": 1})
    (fault,) = [f for f in generated.faults if f.kind == "unknown_domain_value"]
    _load(pipeline_settings, generated)
    domain = APPOINTMENTS.column(fault.column).domain
    stg = _stg_rows(pipeline_settings, APPOINTMENTS, [fault.column])
    assert stg[fault.row_number][1] == fault.value
    mapped = query(pipeline_settings,
                   sql.SQL("SELECT is_mapped FROM {} WHERE value = %s").format(sql.Identifier("etl", f"domain_{domain}")),
                   (fault.value,))
    assert mapped == [(False,)]
    reported = query(pipeline_settings,
                     "SELECT detail FROM etl.dq_results WHERE check_name = 'unmapped_domain_values' AND column_name = %s",
                     (fault.column,))
    assert fault.value in reported[0][0]["values"]


def test_nasty_text_reaches_stg_unchanged(pipeline_settings):
    generated = _appointments_file({"nasty_text": 4})
    planted = [f for f in generated.faults if f.kind == "nasty_text"]
    _load(pipeline_settings, generated)
    _assert_reconciled(pipeline_settings, generated)
    for fault in planted:
        stg = _stg_rows(pipeline_settings, APPOINTMENTS, [fault.column])
        assert stg[fault.row_number][1] == fault.value


def test_dst_gap_and_overlap_use_nz_standard_time(pipeline_settings):
    generated = _appointments_file({})
    names = APPOINTMENTS.column_names
    row = list(generated.rows[0])
    row[names.index("schedule_date")] = "2025-09-28 02:30:00.000"  # skipped by spring-forward
    generated.rows[0] = row
    row = list(generated.rows[1])
    row[names.index("schedule_date")] = "2025-04-06 02:30:00.000"  # repeated by fall-back
    generated.rows[1] = row
    row = list(generated.rows[2])
    row[names.index("schedule_date")] = "2025-01-29 18:18:11.347"  # summer time, ordinary
    generated.rows[2] = row
    generated.data = generated.encode()
    _load(pipeline_settings, generated)
    stg = _stg_rows(pipeline_settings, APPOINTMENTS, ["schedule_date"])
    utc = timezone.utc
    assert stg[1][1] == datetime(2025, 9, 27, 14, 30, tzinfo=utc)
    assert stg[2][1] == datetime(2025, 4, 5, 14, 30, tzinfo=utc)
    assert stg[3][1] == datetime(2025, 1, 29, 5, 18, 11, 347000, tzinfo=utc)


def test_no_date_sentinel_becomes_null_and_required_sentinel_rejects(pipeline_settings):
    patients = get_spec("Patients")
    (batch,) = build_series(seed=3, patients=5, practices=PRACTICE, deltas=0, extracts=["Patients"])
    (generated,) = batch.files
    names = patients.column_names
    date_column = next(c.column for c in patients.columns if c.type is ContractType.DATE and not c.required)
    row = list(generated.rows[0])
    row[names.index(date_column)] = "1900-01-01"
    generated.rows[0] = row
    generated.data = generated.encode()
    put_file(make_client(pipeline_settings), pipeline_settings.s3_bucket, generated.name, generated.data)
    run(pipeline_settings)
    stg = _stg_rows(pipeline_settings, patients, [date_column])
    errors, value = stg[1]
    assert value is None and not _has_error(errors, date_column)


@pytest.mark.parametrize("kind", ["wrong_field_count", "invalid_utf16", "truncated_last_row"])
def test_a_broken_file_lands_no_rows_and_does_not_stop_the_others(pipeline_settings, kind):
    broken = _appointments_file({kind: 1})
    (fault,) = broken.faults
    good = build_series(seed=5, patients=5, practices=PRACTICE, deltas=0, extracts=["Vaccine"])[0].files[0]
    s3 = make_client(pipeline_settings)
    put_file(s3, pipeline_settings.s3_bucket, broken.name, broken.data)
    put_file(s3, pipeline_settings.s3_bucket, good.name, good.data)
    summary = run(pipeline_settings)
    assert summary["status"] == "partial"
    assert summary["by_status"] == {"failed": 1, "merged": 1}
    (failure,) = summary["failures"]
    assert failure["s3_key"] == broken.name
    assert broken.name in failure["error"] and f"row {fault.row_number}" in failure["error"]
    detail = query(pipeline_settings, "SELECT error_detail FROM etl.load_run_files WHERE s3_key = %s",
                   (broken.name,))[0][0]
    assert detail["kind"] == fault.reader_kind and detail["row_number"] == fault.row_number
    if kind == "wrong_field_count":
        assert detail["expected"] == APPOINTMENTS.field_count and detail["found"] != APPOINTMENTS.field_count
    assert query(pipeline_settings, "SELECT count(*) FROM raw.appointments_raw") == [(0,)]
    assert query(pipeline_settings, "SELECT count(*) FROM stg.vaccine") == [(len(good.rows),)]


def test_unparseable_key_is_reported_and_discovery_goes_on(pipeline_settings):
    good = build_series(seed=5, patients=5, practices=PRACTICE, deltas=0, extracts=["Vaccine"])[0].files[0]
    s3 = make_client(pipeline_settings)
    put_file(s3, pipeline_settings.s3_bucket, "685146_535_NotAnExtract_202508180544_202508190544_2508190850.csv", b"x")
    put_file(s3, pipeline_settings.s3_bucket, "exports/readme.txt", b"hello")
    put_file(s3, pipeline_settings.s3_bucket, "C:\\Jobs\\indici_export\\" + good.name, good.data)
    summary = run(pipeline_settings)
    assert summary["status"] == "succeeded" and summary["unparseable_keys"] == 2
    skipped = query(pipeline_settings, "SELECT s3_key, reason FROM etl.skipped_keys ORDER BY s3_key")
    assert [k for k, _ in skipped] == sorted(
        ["685146_535_NotAnExtract_202508180544_202508190544_2508190850.csv", "exports/readme.txt"]
    )
    assert all(reason for _, reason in skipped)


def test_reject_rate_over_the_threshold_fails_the_file(pipeline_settings):
    from worker.io.db import connect
    from worker.pipeline import config

    generated = _appointments_file({"missing_required": 3})
    with connect(pipeline_settings) as conn:
        config.set_value(conn, "Appointments", "max_reject_rate", 0.01)
        config.set_value(conn, "Appointments", "min_rows_for_rates", 10)
        conn.commit()
    try:
        summary = _load(pipeline_settings, generated)
    finally:
        with connect(pipeline_settings) as conn:
            conn.execute("DELETE FROM etl.config WHERE source = 'operator'")
            conn.commit()
        from worker.pipeline.migrate import sync_config_defaults

        sync_config_defaults(pipeline_settings)
    assert summary["by_status"] == {"failed": 1}
    (failure,) = summary["failures"]
    assert "reject_rate" in failure["error"]
    checks = dict(query(pipeline_settings, "SELECT check_name, passed FROM etl.dq_results WHERE column_name IS NULL "
                                           "AND check_name IN ('reject_rate', 'reconciliation')"))
    assert checks == {"reject_rate": False, "reconciliation": True}


def test_a_nul_character_fails_the_file_with_its_row(pipeline_settings):
    generated = _appointments_file({})
    row = list(generated.rows[2])
    text_column = next(c.column for c in APPOINTMENTS.columns if c.type is ContractType.TEXT)
    row[APPOINTMENTS.column_names.index(text_column)] = "a\x00b"  # Postgres text cannot hold NUL
    generated.rows[2] = row
    generated.data = generated.encode()
    summary = _load(pipeline_settings, generated)
    (failure,) = summary["failures"]
    assert "row 3" in failure["error"]
    detail = query(pipeline_settings, "SELECT error_detail FROM etl.load_run_files")[0][0]
    assert detail["kind"] == "nul" and detail["row_number"] == 3
    assert query(pipeline_settings, "SELECT count(*) FROM raw.appointments_raw") == [(0,)]


def test_an_empty_file_is_a_valid_file_with_no_rows(pipeline_settings):
    generated = _appointments_file({})
    put_file(make_client(pipeline_settings), pipeline_settings.s3_bucket, generated.name, b"\xff\xfe")  # BOM only
    summary = run(pipeline_settings)
    assert summary["status"] == "succeeded" and summary["rows_read"] == 0
    assert query(pipeline_settings, "SELECT status, rows_read, rows_staged FROM etl.load_run_files") == [("merged", 0, 0)]
