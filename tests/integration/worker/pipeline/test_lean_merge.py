"""Lean merges (issue 7, item 3): integrity by construction with orphan counts, the dimension fast path
against the full recompute, a continuous calendar whatever the load order, per-extract fact merges."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import psycopg
import pytest

from contracts.registry import get as get_spec
from tests.integration.worker.pipeline.helpers import reset_data, run
from tests.integration.worker.pipeline.test_merge import (
    T1,
    T2,
    T3,
    T4,
    appointment,
    core_snapshot,
    load_date,
    load_rows,
    patient,
    put_rows,
    q,
    row,
    utc,
    versions,
)
from worker.io.db import connect
from worker.pipeline import lifecycle
from worker.pipeline.merge import ensure_dim_date, merge_facts_of_extract, merge_run
from worker.pipeline.run import Selection, plan_run, process_file

pytestmark = pytest.mark.integration


def _orphan_rows(s, extract: str) -> list[tuple]:
    return q(s, "SELECT column_name, rule, observed, passed FROM etl.dq_results WHERE check_name = 'orphans' "
                "AND extract = %s ORDER BY dq_result_id", (extract,))


def test_no_foreign_key_constraints_in_core(pipeline_settings):
    """Facts since migration 0009, dimensions (their lineage) since 0010: integrity by construction."""
    fks = q(pipeline_settings, "SELECT conrelid::regclass::text FROM pg_constraint WHERE contype = 'f' "
                               "AND connamespace = 'core'::regnamespace")
    assert fks == [], fks


def test_every_relation_of_a_fact_merge_is_counted_zero(pipeline_settings):
    s = pipeline_settings
    load_rows(s, "Patients", [patient(1)], T1)
    load_rows(s, "Appointments", [appointment(10, 1, T1), appointment(11, 77, T1)], T2)  # 77: inferred
    rows = _orphan_rows(s, "Appointments")
    assert {r[1] for r in rows} == {
        "core.fact_appointment.practice_key -> core.dim_practice.practice_key",
        "core.fact_appointment.patient_key -> core.dim_patient.patient_key",
        "core.fact_appointment.provider_key -> core.dim_provider.provider_key",
        "core.fact_appointment.date_key -> core.dim_date.date_key",
        "core.fact_appointment.load_file_id -> etl.load_run_files.file_id",
        # the inferred members it may create name their lineage too
        "core.dim_patient.load_file_id -> etl.load_run_files.file_id",
        "core.dim_practice.load_file_id -> etl.load_run_files.file_id",
        "core.dim_provider.load_file_id -> etl.load_run_files.file_id",
    }
    assert all(observed == 0 and passed for _, _, observed, passed in rows)
    patients = _orphan_rows(s, "Patients")
    assert ("load_file_id", "core.dim_patient.load_file_id -> etl.load_run_files.file_id", 0, True) in patients
    # and what they guard holds: every fact names an existing version of each dimension and a calendar day
    assert q(s, "SELECT count(*) FROM core.fact_appointment a LEFT JOIN core.dim_patient p USING (patient_key) "
                "LEFT JOIN core.dim_date d USING (date_key) WHERE p.patient_key IS NULL OR d.date_key IS NULL") \
        == [(0,)]


def test_an_unresolvable_reference_fails_the_merge_with_a_clear_error(pipeline_settings):
    """A dimension key whose rows are all closed (a broken invariant, made here by hand) leaves the
    fact's reference unresolved: the merge fails, nothing of it reaches core, the count is recorded."""
    s = pipeline_settings
    load_rows(s, "Patients", [patient(1)], T1)
    with psycopg.connect(s.database_url.get_secret_value()) as conn:
        conn.execute("UPDATE core.dim_patient SET is_current = false WHERE patient_id = 1")
    put_rows(s, "Appointments", [appointment(10, 1, T1)], T2)
    summary = run(s, Selection(kind="backfill", date_from=T2.date(), date_to=T2.date()))
    assert summary["status"] != "succeeded"
    (error,), = q(s, "SELECT error FROM etl.load_runs WHERE load_run_id = %s", (summary["load_run_id"],))
    assert "OrphanError" in error and "referential integrity" in error
    assert "core.fact_appointment.patient_key -> core.dim_patient.patient_key" in error
    assert q(s, "SELECT count(*) FROM core.fact_appointment") == [(0,)]
    assert q(s, "SELECT status FROM etl.load_run_files WHERE extract = 'Appointments'") == [("staged",)]
    failed = [r for r in _orphan_rows(s, "Appointments") if not r[3]]
    assert failed == [("patient_key", "core.fact_appointment.patient_key -> core.dim_patient.patient_key", 1, False)]


def test_a_fact_on_a_day_missing_from_the_calendar_fails_the_merge(pipeline_settings):
    """The calendar key is computed from the main date, not read from core.dim_date, so the upsert checks
    that it names a day: a hole in the calendar (made by hand: a trigger that drops one day's insert)
    fails the merge with the date relation counted, and nothing of the fact reaches core."""
    s = pipeline_settings
    url = s.database_url.get_secret_value()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION public.test_calendar_hole() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN RETURN NULL; END $$")
        conn.execute("GRANT EXECUTE ON FUNCTION public.test_calendar_hole() TO PUBLIC")
        conn.execute("CREATE TRIGGER test_calendar_hole BEFORE INSERT ON core.dim_date FOR EACH ROW "
                     "WHEN (NEW.date = DATE '2025-08-10') EXECUTE FUNCTION public.test_calendar_hole()")
    try:
        put_rows(s, "Appointments", [appointment(10, 1, T1), appointment(11, 1, T1 + timedelta(days=1))], T2)
        summary = run(s, Selection(kind="backfill", date_from=T2.date(), date_to=T2.date()))
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP TRIGGER test_calendar_hole ON core.dim_date")
            conn.execute("DROP FUNCTION public.test_calendar_hole()")
    assert summary["status"] != "succeeded"
    (error,), = q(s, "SELECT error FROM etl.load_runs WHERE load_run_id = %s", (summary["load_run_id"],))
    assert "OrphanError" in error and "core.fact_appointment.date_key -> core.dim_date.date_key" in error
    assert q(s, "SELECT count(*) FROM core.fact_appointment") == [(0,)]
    failed = [r for r in _orphan_rows(s, "Appointments") if not r[3]]
    assert failed == [("date_key", "core.fact_appointment.date_key -> core.dim_date.date_key", 1, False)]


def test_a_dimension_merge_that_would_orphan_a_fact_fails(pipeline_settings):
    """A fact pointing at a version the recomputed history drops (made by hand: a stray version of
    patient 1 that a fact of patient 2 names) is counted before the delete and fails the merge."""
    s = pipeline_settings
    load_rows(s, "Patients", [patient(1), patient(2)], T2)
    load_rows(s, "Appointments", [appointment(10, 2, T3)], T3)
    with psycopg.connect(s.database_url.get_secret_value()) as conn:
        stray = conn.execute(
            "INSERT INTO core.dim_patient (patient_id, practice_id, per_org_id, effective_from, effective_to, "
            "is_current, load_file_id, row_number, s3_version_id, file_hash, date_extracted, date_to, load_run_id) "
            "SELECT patient_id, practice_id, per_org_id, '2000-01-01', effective_from, false, load_file_id, "
            "row_number, "
            "s3_version_id, file_hash, date_extracted, date_to, load_run_id FROM core.dim_patient WHERE patient_id = 1 "
            "RETURNING patient_key").fetchone()[0]
        conn.execute("UPDATE core.fact_appointment SET patient_key = %s", (stray,))
    put_rows(s, "Patients", [patient(1, "Older")], T1)  # a late, older version: patient 1 is recomputed
    summary = run(s, Selection(kind="backfill", date_from=T1.date(), date_to=T1.date()))
    assert summary["status"] != "succeeded"
    (error,), = q(s, "SELECT error FROM etl.load_runs WHERE load_run_id = %s", (summary["load_run_id"],))
    assert "core.fact_appointment.patient_key -> core.dim_patient.patient_key" in error
    assert q(s, "SELECT count(*) FROM core.dim_patient WHERE patient_key = %s", (stray,)) == [(1,)]  # rolled back
    assert ("patient_key", "core.fact_appointment.patient_key -> core.dim_patient.patient_key", 1, False) in \
        _orphan_rows(s, "Patients")


def _stage_only(s, day, last=None) -> int:
    """Plan one run of the batches from `day` to `last` and land and stage its files (no merge)."""
    from worker.io.s3 import make_client

    with connect(s) as conn:
        plan = plan_run(conn, make_client(s), s, Selection(kind="backfill", date_from=day, date_to=last or day))
        for file_id in plan.file_ids:
            assert process_file(conn, make_client(s), file_id, s) == "staged"
        conn.commit()
        return plan.run_id


def test_fast_path_and_full_recompute_give_the_same_history(pipeline_settings):
    """Batches in their natural order take the fast path (history grows at its end); the same batches
    merged all at once take the slow path (several versions per key). Core is the same."""
    s = pipeline_settings
    weeks = [
        (T1, [patient(1, "A", "a@x.nz"), patient(2, "B"), patient(3, "C")]),
        (T2, [patient(1, "A", "b@x.nz"), patient(2, "B2"), patient(3, "C")]),            # untracked, tracked
        (T3, [patient(1, "A", "b@x.nz"), patient(2, "B2"), patient(3, "C"), patient(4, "D")]),  # re-delivery
        (T4, [patient(1, "A2", "b@x.nz"), patient(2, "B2"), patient(3, "C", "c@x.nz"), patient(4, "D")]),
    ]
    for when, rows in weeks:
        put_rows(s, "Patients", rows, when)
    put_rows(s, "Appointments", [appointment(10, 1, T1 + timedelta(days=1)), appointment(11, 2, T4 + timedelta(days=1)),
                                 appointment(12, 1, T4 + timedelta(hours=2))], T1 + timedelta(hours=1))
    results = []
    for when, _ in weeks:
        results.append(load_date(s, when.date())["merge"]["extracts"]["Patients"])
    assert [r["slow"] for r in results] == [0, 0, 0, 0]
    assert results[2]["inserted"] == 1 and results[2]["updated"] == 0  # only the new patient is written
    fast = core_snapshot(s)
    assert [(v[0], v[1], v[4]) for v in versions(s, 2)] == [("B", "a@example.org", False),
                                                            ("B2", "a@example.org", True)]
    assert q(s, "SELECT a.appointment_id, p.family_name FROM core.fact_appointment a JOIN core.dim_patient p "
                "USING (patient_key) ORDER BY 1") == [(10, "A"), (11, "B2"), (12, "A2")]

    reset_data(s.database_url.get_secret_value())
    run_id = _stage_only(s, T1.date(), T4.date())  # every batch in one run: merged at once
    with connect(s) as conn:
        summary = merge_run(conn, run_id, s)
    assert summary["extracts"]["Patients"]["fast"] == 0
    assert core_snapshot(s) == fast


def test_calendar_is_continuous_and_independent_of_load_order(pipeline_settings):
    s = pipeline_settings
    put_rows(s, "Appointments", [appointment(10, 1, datetime(2025, 8, 1, 9)),
                                 appointment(11, 1, datetime(2025, 8, 3, 9))], T1)
    put_rows(s, "Appointments", [appointment(12, 1, datetime(2025, 8, 20, 9))], T2)
    calendars = []
    for order in ((T1, T2), (T2, T1)):
        reset_data(s.database_url.get_secret_value())
        for when in order:
            load_date(s, when.date())
        calendars.append(q(s, "SELECT date::text FROM core.dim_date ORDER BY date"))
    assert calendars[0] == calendars[1]
    days = [date.fromisoformat(d) for (d,) in calendars[0]]
    assert days == [days[0] + timedelta(days=i) for i in range(len(days))]  # no hole
    assert days[0] <= date(2025, 8, 1) and days[-1] >= date(2025, 8, 20)
    # an implausible date gets its own row, and the centuries between are not filled
    with connect(s) as conn:
        ensure_dim_date(conn, None, None, [date(1000, 1, 1)])
        conn.commit()
    assert q(s, "SELECT count(*) FROM core.dim_date WHERE date < '1900-01-01'") == [(1,)]
    assert q(s, "SELECT count(*) FROM core.dim_date") == [(len(days) + 1,)]


def test_fact_merges_per_extract_after_the_dimensions(pipeline_settings):
    """The Celery driver's merge in parts (lifecycle.merge part=...): dimensions, then each fact
    extract on its own; each part marks its files merged and adds to the run's merge summary."""
    s = pipeline_settings
    put_rows(s, "Patients", [patient(1, "A")], T1)
    put_rows(s, "Appointments", [appointment(10, 1, T1)], T1)
    run_id = _stage_only(s, T1.date())
    with connect(s) as conn:
        dims = lifecycle.merge(conn, run_id, s, part=lifecycle.DIMENSIONS)
        assert set(dims["extracts"]) == {"Patients"}
        assert lifecycle.staged_fact_extracts(conn, run_id) == ["Appointments"]
        facts = lifecycle.merge(conn, run_id, s, part="Appointments")
        assert set(facts["extracts"]) == {"Appointments"} and facts["files_merged"] == 1
        # the practice and provider (no PracticeInfo or Providers file), not the patient
        assert "Patients" not in facts["extracts"]["Appointments"]["inferred"]
        assert lifecycle.staged_fact_extracts(conn, run_id) == []
        again = lifecycle.merge(conn, run_id, s, part="Appointments")
        assert again is not None and again["files_merged"] == 0
        with pytest.raises(ValueError):
            merge_facts_of_extract(conn, run_id, "Patients", s)
    assert q(s, "SELECT DISTINCT status FROM etl.load_run_files") == [("merged",)]
    assert q(s, "SELECT p.family_name FROM core.fact_appointment JOIN core.dim_patient p USING (patient_key)") \
        == [("A",)]
    (merge,), = q(s, "SELECT summary -> 'merge' FROM etl.load_runs WHERE load_run_id = %s", (run_id,))
    assert merge["files_merged"] == 2 and set(merge["extracts"]) == {"Patients", "Appointments"}
    assert get_spec("Appointments").is_dimension is False


def test_several_files_of_a_fact_in_one_merge_keep_the_newest_version(pipeline_settings):
    """The narrow newest-version sort: two batches holding the same appointments, merged at once."""
    s = pipeline_settings
    put_rows(s, "Appointments", [appointment(10, 1, T1, "Booked"), appointment(11, 1, T1, "Booked")], T1)
    put_rows(s, "Appointments", [appointment(10, 1, T1, "Completed")], T2)
    run_id = _stage_only(s, T1.date(), T2.date())
    with connect(s) as conn:
        summary = merge_run(conn, run_id, s)
    assert summary["extracts"]["Appointments"]["inserted"] == 2
    assert q(s, "SELECT appointment_id, appointment_status, date_extracted::text FROM core.fact_appointment "
                "ORDER BY 1") == [(10, "Completed", utc(T2)), (11, "Booked", utc(T1))]


def test_calendar_bounds_are_the_nz_dates_of_the_first_and_last_plausible_instants(pipeline_settings):
    """The range statement compares instants with NZ midnights (contracts/sql/merge.py,
    fact_date_range_statement): an appointment at the first minute of the first plausible NZ day and one
    at the last second of the last are both inside one continuous calendar, with no day of their own."""
    s = pipeline_settings
    load_rows(s, "Appointments", [appointment(10, 1, datetime(1900, 1, 2, 0, 0)),
                                  appointment(11, 1, datetime(2099, 12, 31, 23, 59, 59))], T1)
    assert q(s, "SELECT min(date)::text, max(date)::text, count(*) FROM core.dim_date") == [
        ("1900-01-02", "2099-12-31", (date(2099, 12, 31) - date(1900, 1, 2)).days + 1)]
    assert q(s, "SELECT appointment_id, date_key FROM core.fact_appointment ORDER BY 1") == [
        (10, 19000102), (11, 20991231)]


def test_an_inferred_member_names_the_earliest_row_that_referenced_it(pipeline_settings):
    """Inferred members (contracts/sql/merge.py, inferred_statements): reduced to one row per key and file
    before the earliest-first sort, they must still name the first file (DateExtracted) and, within it,
    the first row that referenced the key."""
    s = pipeline_settings
    put_rows(s, "Appointments", [appointment(10, 1, T1), appointment(11, 77, T1), appointment(12, 78, T1),
                                 appointment(13, 77, T1)], T2)
    put_rows(s, "Appointments", [appointment(20, 78, T1), appointment(21, 77, T1)], T1)
    run_id = _stage_only(s, T1.date(), T2.date())
    with connect(s) as conn:
        merge_run(conn, run_id, s)
    files = dict(q(s, "SELECT date_extracted::text, file_id FROM etl.load_run_files WHERE extract = 'Appointments'"))
    assert q(s, "SELECT p.patient_id, p.load_file_id, p.row_number, p.date_extracted::text, p.file_hash = f.file_hash, "
                "p.s3_version_id = f.s3_version_id FROM core.dim_patient p JOIN etl.load_run_files f "
                "ON f.file_id = p.load_file_id WHERE p.is_inferred ORDER BY p.patient_id") == [
        (1, files[utc(T2)], 1, utc(T2), True, True),  # only in the later file
        (77, files[utc(T1)], 2, utc(T1), True, True),  # rows 2 and 4 of the later file, row 2 of the earlier
        (78, files[utc(T1)], 1, utc(T1), True, True),
    ]
    # within one file, the first of two rows: merge the later file's keys alone into a fresh core
    reset_data(s.database_url.get_secret_value())
    put_rows(s, "Appointments", [appointment(30, 90, T1), appointment(31, 91, T1), appointment(32, 90, T1)], T3)
    run_id = _stage_only(s, T3.date())
    with connect(s) as conn:
        merge_run(conn, run_id, s)
    assert q(s, "SELECT patient_id, row_number FROM core.dim_patient WHERE is_inferred ORDER BY 1") == [(90, 1),
                                                                                                        (91, 2)]


def test_the_referenced_keys_of_one_scan_equal_each_reference_aggregated_alone(pipeline_settings):
    """merge_refs (contracts/sql/merge.py, inferred_refs_statements) reads stg once for every reference
    of the fact (GROUPING SETS); per reference, its rows must be exactly what that reference aggregated
    alone over stg gives: each (key, file) once, with the file's first row holding it, and no key for a
    row whose reference is empty. Two files, empty patients and providers, keys shared across files."""
    from psycopg import sql

    from contracts.registry import load_all
    from contracts.relations import references
    from contracts.sql.merge import REFS_TABLE, _ref_grouping, _ref_key_columns, inferred_refs_statements

    s = pipeline_settings
    def appt(aid, pid, provider):
        return row("Appointments", appointment_id=aid, patient_id=pid, provider_id=provider,
                   schedule_date=T1.strftime("%Y-%m-%d %H:%M:%S.000"))
    put_rows(s, "Appointments", [appt(1, 5, 7), appt(2, "", 7), appt(3, 5, ""), appt(4, 6, 8), appt(5, "", "")], T2)
    put_rows(s, "Appointments", [appt(6, 6, 9), appt(7, 5, 7), appt(8, 6, "")], T1)
    _stage_only(s, T1.date(), T2.date())
    specs = load_all()
    spec = specs["Appointments"]
    refs = references(spec, specs)
    _, masks = _ref_grouping(refs)
    assert len(set(masks.values())) == len(masks) == 3  # practice, patient, provider
    with connect(s) as conn:
        files = [r[0] for r in conn.execute("SELECT file_id FROM etl.load_run_files WHERE extract = 'Appointments'")]
        for statement in inferred_refs_statements(spec, specs):
            conn.execute(statement, {"files": files})
        for ref in refs:
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in _ref_key_columns(ref))
            got = conn.execute(sql.SQL("SELECT {}, load_file_id, row_number FROM {} WHERE g = %s AND {} IS NOT NULL "
                                       "ORDER BY 1, 2, 3, 4").format(cols, REFS_TABLE, sql.Identifier(ref.column)),
                               (masks[_ref_key_columns(ref)],)).fetchall()
            alone = conn.execute(sql.SQL("SELECT {}, load_file_id, min(row_number) FROM stg.appointments "
                                         "WHERE load_file_id = ANY(%s) AND {} IS NOT NULL GROUP BY {}, load_file_id "
                                         "ORDER BY 1, 2, 3, 4").format(cols, sql.Identifier(ref.column), cols),
                                 (files,)).fetchall()
            assert got == alone, ref.column
            assert got, ref.column
        patients = {r[0] for r in conn.execute(sql.SQL("SELECT patient_id FROM {} WHERE g = %s AND patient_id "
                                                       "IS NOT NULL").format(REFS_TABLE),
                                               (masks[("patient_id", "practice_id", "per_org_id")],))}
        assert patients == {5, 6}
        conn.rollback()


def test_dimension_rows_naming_no_ledger_file_are_counted(pipeline_settings):
    """The check that replaced the dimensions' FOREIGN KEY to etl.load_run_files (migration 0010) counts
    the rows a dimension merge is about to write whose lineage names no file, a NULL lineage included."""
    from psycopg import sql

    from contracts.sql.merge import dim_lineage_statement

    s = pipeline_settings
    load_rows(s, "Patients", [patient(1)], T1)
    (file_id,) = q(s, "SELECT file_id FROM etl.load_run_files WHERE extract = 'Patients'")[0]
    with connect(s) as conn:
        conn.execute("CREATE TEMP TABLE lineage_probe (load_file_id bigint)")
        conn.execute("INSERT INTO lineage_probe VALUES (%s), (%s), (%s), (NULL)", (file_id, file_id, file_id + 1000))
        assert conn.execute(dim_lineage_statement(sql.Identifier("lineage_probe"))).fetchone()[0] == 2
        conn.rollback()
