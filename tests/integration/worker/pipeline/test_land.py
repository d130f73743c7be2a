"""Raw landing from a versioned S3 bucket (moto server): lossless rows, lineage, process-once."""

from __future__ import annotations

import hashlib
import threading

import psycopg
import pytest
from psycopg import sql

from contracts.registry import get as get_spec
from tests.conftest import SAMPLE_PATIENTS
from tests.integration.worker.pipeline.helpers import put_file, put_fixture, query, run
from worker.io.db import connect
from worker.io.indici_reader import encode_rows
from worker.io.s3 import make_client
from worker.pipeline import ledger
from worker.pipeline.land import land_file
from worker.pipeline.run import Selection, plan_run

pytestmark = pytest.mark.integration

PATIENTS = get_spec("Patients")


def _sample_rows() -> list[list[str]]:
    # Decoded independently of the project's reader: UTF-16LE, split on the documented separators.
    text = SAMPLE_PATIENTS.read_bytes().decode("utf-16-le")
    return [row.split("|^^|") for row in text.split("|~~|")[:-1]]


def _raw_rows(settings, table: str) -> list[tuple]:
    spec = get_spec(table)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in spec.column_names)
    statement = sql.SQL("SELECT row_number, {} FROM {} ORDER BY load_file_id, row_number").format(
        cols, sql.Identifier("raw", f"{spec.table}_raw")
    )
    return query(settings, statement)


def test_published_sample_lands_byte_for_byte_with_lineage(pipeline_settings):
    s3 = make_client(pipeline_settings)
    version = put_fixture(s3, pipeline_settings.s3_bucket, SAMPLE_PATIENTS)
    summary = run(pipeline_settings)
    assert summary["status"] == "succeeded", summary

    expected = _sample_rows()
    landed = _raw_rows(pipeline_settings, "Patients")
    assert [r[0] for r in landed] == [1, 2]
    assert [list(r[1:]) for r in landed] == expected  # 2 x 220 fields, exactly as in the file
    assert sum(len(r) - 1 for r in landed) == 440

    lineage = query(
        pipeline_settings,
        "SELECT DISTINCT s3_bucket, s3_key, s3_version_id, file_hash, date_extracted, extract_type, "
        "file_per_org_id, file_practice_id, load_run_id, loaded_date_time FROM raw.patients_raw",
    )
    assert len(lineage) == 1  # both rows carry the same lineage and the file's own LoadedDateTime
    bucket, key, vid, digest, extracted, token, per_org, practice, run_id, _ = lineage[0]
    assert (bucket, key, vid) == (pipeline_settings.s3_bucket, SAMPLE_PATIENTS.name, version)
    assert digest == hashlib.sha256(SAMPLE_PATIENTS.read_bytes()).hexdigest()
    assert extracted.isoformat() == "2025-08-18T20:50:00+00:00"  # 2025-08-19 08:50 NZST
    assert (token, per_org, practice, run_id) == ("Patients", 685146, 535, summary["load_run_id"])
    assert {r[9] for r in lineage} == {"2025-08-19 05:42:59.350"}

    ledger_row = query(
        pipeline_settings,
        "SELECT status, rows_read, rows_raw, rows_staged, rows_rejected, encoding FROM etl.load_run_files",
    )
    assert ledger_row == [("merged", 2, 2, 2, 0, "utf-16-le")]
    # the load time: the landing transaction's start (raw.landed_at's default), the same in raw and ledger
    assert query(pipeline_settings, "SELECT DISTINCT r.landed_at = f.landed_at, r.landed_at <= f.staged_at "
                                    "FROM raw.patients_raw r JOIN etl.load_run_files f ON f.file_id = r.load_file_id"
                 ) == [(True, True)]


def test_values_that_look_like_other_types_survive(pipeline_settings):
    """Leading zeros, +, spaces, CR/LF/tab/backslash/quotes and a literal \\N land unchanged."""
    row = _sample_rows()[0]
    nasty = ["0653", "+6421458796", " Registered  ", 'say "hi"\r\nnext\tline \\ end', "\\N", "00-04", "Māori"]
    for i, value in enumerate(nasty):
        row[20 + i] = value
    s3 = make_client(pipeline_settings)
    put_file(s3, pipeline_settings.s3_bucket, SAMPLE_PATIENTS.name, encode_rows([row], bom=True))
    summary = run(pipeline_settings)
    assert summary["status"] == "succeeded", summary
    landed = _raw_rows(pipeline_settings, "Patients")
    assert list(landed[0][1:]) == row
    assert query(pipeline_settings, "SELECT encoding FROM etl.load_run_files") == [("utf-16-le+bom",)]


def test_utf8_file_is_detected_and_lands(pipeline_settings):
    rows = _sample_rows()
    s3 = make_client(pipeline_settings)
    put_file(s3, pipeline_settings.s3_bucket, SAMPLE_PATIENTS.name, encode_rows(rows, encoding="utf-8"))
    assert run(pipeline_settings)["status"] == "succeeded"
    assert [list(r[1:]) for r in _raw_rows(pipeline_settings, "Patients")] == rows
    assert query(pipeline_settings, "SELECT encoding FROM etl.load_run_files") == [("utf-8",)]


def test_second_run_loads_nothing_again(pipeline_settings):
    s3 = make_client(pipeline_settings)
    put_fixture(s3, pipeline_settings.s3_bucket, SAMPLE_PATIENTS)
    first = run(pipeline_settings)
    second = run(pipeline_settings)
    assert first["files"] == 1 and second["files"] == 0 and second["status"] == "succeeded"
    assert query(pipeline_settings, "SELECT count(*) FROM raw.patients_raw") == [(2,)]
    assert query(pipeline_settings, "SELECT count(*) FROM stg.patients") == [(2,)]


def test_same_content_under_a_new_version_is_a_duplicate(pipeline_settings):
    s3 = make_client(pipeline_settings)
    put_fixture(s3, pipeline_settings.s3_bucket, SAMPLE_PATIENTS)
    run(pipeline_settings)
    put_fixture(s3, pipeline_settings.s3_bucket, SAMPLE_PATIENTS)  # re-uploaded: new version id
    summary = run(pipeline_settings)
    assert summary["by_status"] == {"duplicate": 1}
    statuses = query(pipeline_settings, "SELECT status, duplicate_of FROM etl.load_run_files ORDER BY file_id")
    assert statuses == [("merged", None), ("duplicate", 1)]
    assert query(pipeline_settings, "SELECT count(*) FROM raw.patients_raw") == [(2,)]


def test_two_concurrent_landings_of_one_version_load_it_once(pipeline_settings):
    s3 = make_client(pipeline_settings)
    put_fixture(s3, pipeline_settings.s3_bucket, SAMPLE_PATIENTS)
    with connect(pipeline_settings) as conn:
        plan = plan_run(conn, s3, pipeline_settings, Selection())
    (file_id,) = plan.file_ids
    results: list = []
    barrier = threading.Barrier(4)

    def land() -> None:
        with connect(pipeline_settings) as conn:
            barrier.wait()
            results.append(land_file(conn, make_client(pipeline_settings), file_id, pipeline_settings).status)

    threads = [threading.Thread(target=land) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["already", "already", "already", "landed"]
    assert query(pipeline_settings, "SELECT count(*) FROM raw.patients_raw") == [(2,)]
    assert query(pipeline_settings, "SELECT attempts, status FROM etl.load_run_files") == [(1, "landed")]


def test_explicit_reprocess_is_audited_and_reloads_once(pipeline_settings):
    s3 = make_client(pipeline_settings)
    put_fixture(s3, pipeline_settings.s3_bucket, SAMPLE_PATIENTS)
    run(pipeline_settings)
    with psycopg.connect(pipeline_settings.database_url.get_secret_value()) as conn:
        ledger.request_reprocess(conn, 1, "contract fix for IsTransferOfRecords", "test")
    summary = run(pipeline_settings)
    assert summary["by_status"] == {"merged": 1}
    assert query(pipeline_settings, "SELECT count(*) FROM raw.patients_raw") == [(2,)]
    assert query(pipeline_settings, "SELECT count(*) FROM stg.patients") == [(2,)]
    audit = query(pipeline_settings, "SELECT file_id, requested_by, reason, previous_status FROM etl.reprocess_requests")
    assert audit == [(1, "test", "contract fix for IsTransferOfRecords", "merged")]
