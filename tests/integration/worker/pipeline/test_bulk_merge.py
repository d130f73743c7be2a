"""Bulk fact merges (issue 7): a batch larger than the fact it goes into is written without the fact's
reference-key indexes (built again after) and without a conflict check per row. Core must end exactly
as the upsert leaves it, the indexes exactly as the migration made them, and a failed bulk merge must
leave both untouched."""

from __future__ import annotations

import psycopg
import pytest

from tests.integration.worker.pipeline.helpers import reset_data, run
from tests.integration.worker.pipeline.test_merge import T1, T2, T3, appointment, core_snapshot, put_rows, q
from worker.io.roles import roles
from worker.pipeline.run import Selection

pytestmark = pytest.mark.integration


def _indexes(s) -> list[tuple]:
    return q(s, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'core' "
                "AND tablename = 'fact_appointment' ORDER BY 1")


NIGHTS = [
    # 3 appointments into an empty fact
    (T1, [appointment(10, 1, T1), appointment(11, 1, T1), appointment(12, 2, T1)]),
    # 5 rows into a fact of 3: two newer versions of held keys, three new keys
    (T2, [appointment(10, 1, T1, "Completed"), appointment(12, 2, T1, "Completed"), appointment(13, 1, T2),
          appointment(14, 3, T2), appointment(15, 3, T2)]),
    # 1 row into a fact of 6: the nightly upsert
    (T3, [appointment(11, 1, T1, "Completed")]),
]


def _merge_of(s, extracted) -> dict:
    summary = run(s, Selection(kind="backfill", date_from=extracted.date(), date_to=extracted.date()))
    assert summary["status"] == "succeeded", summary
    return summary["merge"]["extracts"]["Appointments"]


def _three_nights(s) -> tuple[list, dict]:
    """The NIGHTS' files (uploaded once: both passes load the same object versions), one run each."""
    return [_merge_of(s, extracted) for extracted, _ in NIGHTS], core_snapshot(s)


def test_bulk_merges_write_what_the_upsert_writes(pipeline_settings):
    s = pipeline_settings
    migrated = _indexes(s)
    assert len(migrated) == 5  # primary key, natural key and the three reference keys

    for extracted, rows in NIGHTS:
        put_rows(s, "Appointments", rows, extracted)
    nights, bulk = _three_nights(s.model_copy(update={"bulk_index_rebuild_rows": 1}))
    assert [n["bulk"] for n in nights] == ["insert", "existing+new", None]
    assert [(n["inserted"], n["updated"]) for n in nights] == [(3, 0), (3, 2), (0, 1)]
    assert "indexes" in nights[0]["steps"] and "indexes" not in nights[2]["steps"]
    assert _indexes(s) == migrated

    reset_data(s.database_url.get_secret_value())
    nights, upserted = _three_nights(s.model_copy(update={"bulk_index_rebuild_rows": 0}))
    assert [n["bulk"] for n in nights] == [None, None, None]
    assert bulk == upserted
    statuses = q(s, "SELECT appointment_id, appointment_status FROM core.fact_appointment ORDER BY 1")
    assert statuses == [(10, "Completed"), (11, "Completed"), (12, "Completed"), (13, "Booked"), (14, "Booked"),
                        (15, "Booked")]


def test_a_failed_bulk_merge_keeps_the_indexes_and_writes_nothing(pipeline_settings):
    """An orphan (a broken dimension invariant, made by hand) fails the merge after the bulk insert ran:
    the rollback brings the dropped indexes back and leaves the fact empty."""
    s = pipeline_settings.model_copy(update={"bulk_index_rebuild_rows": 1})
    migrated = _indexes(s)
    put_rows(s, "Appointments", [appointment(10, 1, T1)], T1)
    _merge_of(s, T1)  # patient 1 inferred
    with psycopg.connect(s.database_url.get_secret_value()) as conn:
        conn.execute("UPDATE core.dim_patient SET is_current = false WHERE patient_id = 1")
        conn.execute("TRUNCATE core.fact_appointment")
    put_rows(s, "Appointments", [appointment(20, 1, T2), appointment(21, 1, T2)], T2)
    summary = run(s, Selection(kind="backfill", date_from=T2.date(), date_to=T2.date()))
    assert summary["status"] != "succeeded"
    (error,), = q(s, "SELECT error FROM etl.load_runs WHERE load_run_id = %s", (summary["load_run_id"],))
    assert "OrphanError" in error and "core.fact_appointment.patient_key -> core.dim_patient.patient_key" in error
    assert q(s, "SELECT count(*) FROM core.fact_appointment") == [(0,)]
    assert _indexes(s) == migrated


def test_only_the_writer_runs_the_index_function_and_only_on_facts(pipeline_settings):
    s = pipeline_settings
    r = roles(s)
    with psycopg.connect(s.database_url.get_secret_value()) as conn:
        owner, writer, reader = conn.execute(
            "SELECT p.proowner::regrole::text, has_function_privilege(%s, p.oid, 'EXECUTE'), "
            "has_function_privilege(%s, p.oid, 'EXECUTE') FROM pg_proc p "
            "WHERE p.oid = 'etl.set_fact_lookup_indexes(text, boolean)'::regprocedure",
            (r.writer, r.reader)).fetchone()
        assert owner == r.owner and writer and not reader
        with pytest.raises(psycopg.errors.RaiseException, match="not a fact of the contracts: dim_patient"):
            conn.execute("SELECT etl.set_fact_lookup_indexes('dim_patient', false)")


def test_a_bulk_merge_plans_hash_joins_then_gives_the_planner_back(pipeline_settings):
    """A bulk load turns nested loops off for its upsert (stg may have no statistics yet) and restores
    the setting after, so the next extract merged in the same transaction plans as usual."""
    from contracts.registry import get as get_spec
    from tests.integration.worker.pipeline.test_lean_merge import _stage_only
    from worker.io.db import connect
    from worker.pipeline.merge import merge_extract

    s = pipeline_settings.model_copy(update={"bulk_index_rebuild_rows": 1})
    put_rows(s, "Appointments", [appointment(10, 1, T1), appointment(11, 2, T1)], T1)
    _stage_only(s, T1.date())
    with connect(s) as conn:
        files = [r[0] for r in conn.execute("SELECT file_id FROM etl.load_run_files WHERE extract = 'Appointments'")]
        before = conn.execute("SELECT current_setting('enable_nestloop')").fetchone()
        result = merge_extract(conn, get_spec("Appointments"), files, s)
        after = conn.execute("SELECT current_setting('enable_nestloop')").fetchone()
        conn.rollback()
    assert result.bulk == "insert" and result.inserted == 2
    assert before == after == ("on",)
