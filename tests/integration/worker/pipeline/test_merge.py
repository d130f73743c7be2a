"""Helpers of the merge tests: load batches through the real pipeline, then merge; snapshot core."""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg
from psycopg import sql

from contracts import naming
from contracts.registry import get as get_spec
from contracts.registry import load_all
from contracts.sql import merge as M
from tests.integration.worker.pipeline.helpers import put_file, run
from worker.io.db import connect
from worker.io.indici_reader import encode_rows
from worker.io.s3 import make_client
from worker.pipeline.merge import merge_run
from worker.pipeline.run import Selection
from worker.synth.writer import file_name

PER_ORG, PRACTICE = 685146, 535


def load_date(settings, day) -> dict:
    """Run the inline pipeline (land, stage, merge) for one DateExtracted day (backfill)."""
    summary = run(settings, Selection(kind="backfill", date_from=day, date_to=day))
    assert summary["status"] == "succeeded", summary
    return summary


def put_rows(settings, extract: str, rows: list[list[str]], extracted: datetime,
             practice: tuple[int, int] = (PER_ORG, PRACTICE)) -> str:
    """Upload a real-format file of `rows` for `extract` extracted at `extracted` (NZ local)."""
    spec = get_spec(extract)
    dto = extracted - timedelta(minutes=10)
    name = file_name(practice[0], practice[1], spec.file_tokens[0], dto - timedelta(days=7), dto, extracted)
    put_file(make_client(settings), settings.s3_bucket, name, encode_rows(rows))
    return name


def load_rows(settings, extract: str, rows: list[list[str]], extracted: datetime) -> dict:
    put_rows(settings, extract, rows, extracted)
    return load_date(settings, extracted.date())


def q(settings, statement, params=None) -> list[tuple]:
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        return conn.execute(statement, params).fetchall()


def core_snapshot(settings) -> dict[str, list[tuple]]:
    """Every core dimension and fact, row by row, without surrogate keys, load_run_id and merged_at.
    FK values are replaced by the referenced row's natural key + effective_from; load_file_id by the
    file's (s3_key, s3_version_id), so two loads in different orders compare equal."""
    specs = load_all()
    out: dict[str, list[tuple]] = {}
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        for spec in specs.values():
            table = sql.Identifier(naming.CORE, spec.core.table)
            skey = naming.surrogate_key(spec.core.table)
            cols = [r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'core' "
                "AND table_name = %s ORDER BY ordinal_position", (spec.core.table,)).fetchall()]
            refs = {r.fk: r for r in M.references(spec, specs)}
            select, joins = [], []
            for i, c in enumerate(cols):
                if c in (skey, "load_run_id", "merged_at"):
                    continue
                if c in refs:
                    ref = refs[c]
                    alias = sql.Identifier(f"r{i}")
                    target = ref.target
                    joins.append(sql.SQL("LEFT JOIN {} {} ON {}.{} = t.{}").format(
                        sql.Identifier(naming.CORE, target.core.table), alias, alias,
                        sql.Identifier(naming.surrogate_key(target.core.table)), sql.Identifier(c)))
                    select.append(sql.SQL("ROW({})::text").format(sql.SQL(", ").join(
                        [sql.SQL("{}.{}").format(alias, sql.Identifier(k)) for k in target.natural_key]
                        + [sql.SQL("{}.effective_from").format(alias)])))
                    continue
                if c == "load_file_id":
                    alias = sql.Identifier(f"lf{i}")
                    joins.append(sql.SQL("LEFT JOIN etl.load_run_files {} ON {}.file_id = t.load_file_id").format(alias, alias))
                    select.append(sql.SQL("{}.s3_key, {}.s3_version_id").format(alias, alias))
                    continue
                select.append(sql.SQL("t.{}::text").format(sql.Identifier(c)))
            statement = sql.SQL("SELECT {} FROM {} t {}").format(sql.SQL(", ").join(select), table, sql.SQL(" ").join(joins))
            rows = conn.execute(statement).fetchall()
            out[spec.core.table] = sorted(rows, key=lambda r: tuple("" if v is None else str(v) for v in r))
    return out


def set_config(settings, extract: str, key: str, value) -> None:
    from worker.pipeline.config import set_value

    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        set_value(conn, extract, key, value)


def clear_config(settings, keys=("full_file_deletes", "full_batches")) -> None:
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        conn.execute("DELETE FROM etl.config WHERE key = ANY(%s)", (list(keys),))


# ======================================================================================================
# Tests
# ======================================================================================================
import pytest  # noqa: E402

from worker.synth.batches import build_series  # noqa: E402
from worker.synth.writer import write_s3  # noqa: E402

pytestmark = pytest.mark.integration


def test_every_extract_merges_from_generated_batches(pipeline_settings):
    """The generated SQL of all 18 extracts executes on an empty and on a loaded database, and a second
    merge of the same set changes nothing."""
    batches = build_series(seed=3, patients=10, deltas=2)
    write_s3([f for b in batches for f in b.files], pipeline_settings.s3_bucket, "", make_client(pipeline_settings))
    for b in batches:
        result = load_date(pipeline_settings, b.date_extracted.date())
        assert result["merge"]["files_merged"] == len(b.files)
        assert set(result["merge"]["extracts"]) == set(load_all())
    counts = {t: len(rows) for t, rows in core_snapshot(pipeline_settings).items()}
    assert all(n > 0 for n in counts.values()), counts
    assert q(pipeline_settings, "SELECT DISTINCT status FROM etl.load_run_files") == [("merged",)]


# -- crafted rows ---------------------------------------------------------------------------------------
import hashlib  # noqa: E402
import hmac  # noqa: E402
from datetime import date  # noqa: E402
from functools import lru_cache  # noqa: E402

from tests.integration.worker.pipeline.helpers import reset_data  # noqa: E402
from worker.pipeline.identity import ConfigurationError  # noqa: E402
from worker.pipeline.merge import merge_extract  # noqa: E402

T1 = datetime(2025, 8, 10, 9, 0)
T2 = datetime(2025, 8, 17, 9, 0)
T3 = datetime(2025, 8, 24, 9, 0)
T4 = datetime(2025, 8, 31, 9, 0)
PATIENTS = get_spec("Patients")
APPOINTMENTS = get_spec("Appointments")
NZ_OFFSET = "+12:00"  # August is NZ standard time


@lru_cache(maxsize=1)
def _base() -> dict[str, list[str]]:
    batch = build_series(seed=11, patients=4, deltas=0, practices=((PER_ORG, PRACTICE),),
                         extracts=["Patients", "Appointments"])[0]
    return {"Patients": batch.file("Patients").rows[0], "Appointments": batch.file("Appointments").rows[0]}


def row(extract: str, **values) -> list[str]:
    spec = get_spec(extract)
    out = list(_base()[extract])
    for name, value in values.items():
        out[spec.column_names.index(name)] = str(value)
    return out


def patient(pid: int, family: str = "Smith", email: str = "a@example.org", nhi: str = "ZZZ0016", **kw) -> list[str]:
    return row("Patients", patient_id=pid, family_name=family, email=email, nhi_number=nhi, **kw)


def appointment(aid: int, pid: int, when: datetime, status: str = "Booked") -> list[str]:
    return row("Appointments", appointment_id=aid, patient_id=pid, appointment_status=status,
               schedule_date=when.strftime("%Y-%m-%d %H:%M:%S.000"))


def utc(local: datetime) -> str:
    from worker.pipeline.nztime import nz_local_to_utc

    return nz_local_to_utc(local).strftime("%Y-%m-%d %H:%M:%S+00")


def versions(settings, pid: int) -> list[tuple]:
    return q(settings,
             "SELECT family_name, email, effective_from::text, effective_to::text, is_current, is_inferred, "
             "is_removed, date_extracted::text FROM core.dim_patient WHERE patient_id = %s ORDER BY effective_from",
             (pid,))


@pytest.fixture()
def clean_config(pipeline_settings):
    clear_config(pipeline_settings)
    yield pipeline_settings
    clear_config(pipeline_settings)


def test_scd2_change_redelivery_and_untracked_update(pipeline_settings):
    s = pipeline_settings
    load_rows(s, "Patients", [patient(1, "Smith", "a@x.nz")], T1)
    assert versions(s, 1) == [("Smith", "a@x.nz", utc(T1), None, True, False, False, utc(T1))]

    load_rows(s, "Patients", [patient(1, "Jones", "a@x.nz")], T2)  # tracked change: new version
    assert versions(s, 1) == [
        ("Smith", "a@x.nz", utc(T1), utc(T2), False, False, False, utc(T1)),
        ("Jones", "a@x.nz", utc(T2), None, True, False, False, utc(T2)),
    ]

    load_rows(s, "Patients", [patient(1, "Jones", "b@x.nz")], T3)  # untracked change: in place
    assert versions(s, 1) == [
        ("Smith", "a@x.nz", utc(T1), utc(T2), False, False, False, utc(T1)),
        ("Jones", "b@x.nz", utc(T2), None, True, False, False, utc(T3)),
    ]
    before = q(s, "SELECT t::text FROM core.dim_patient t ORDER BY patient_key")

    # unchanged re-delivery (with another patient so the bytes differ): no new version, nothing updated
    load_rows(s, "Patients", [patient(1, "Jones", "b@x.nz"), patient(2)], T4)
    after = q(s, "SELECT t::text FROM core.dim_patient t WHERE patient_id = 1 ORDER BY patient_key")
    assert len(after) == 2
    assert after[0] == before[0]  # the closed version is untouched
    # lineage names the version that gave the row its values: the earliest of the newest identical
    # versions, so an unchanged re-delivery rewrites nothing (the current version is untouched too)
    assert after[1] == before[1]
    assert versions(s, 1)[1][7] == utc(T3)
    assert [r[:3] for r in versions(s, 1)] == [("Smith", "a@x.nz", utc(T1)), ("Jones", "b@x.nz", utc(T2))]
    assert len(before) == 2


def test_remerge_of_the_same_set_changes_nothing(pipeline_settings):
    s = pipeline_settings
    load_rows(s, "Patients", [patient(1, "Smith"), patient(2)], T1)
    load_rows(s, "Patients", [patient(1, "Jones")], T2)
    load_rows(s, "Appointments", [appointment(10, 1, T2)], T3)
    snapshot = {t: q(s, sql.SQL("SELECT t::text FROM {} t").format(sql.Identifier("core", t)))
                for t in ("dim_patient", "fact_appointment", "dim_practice")}
    with connect(s) as conn:
        for extract in ("Patients", "Appointments"):
            ids = [r[0] for r in conn.execute("SELECT file_id FROM etl.load_run_files WHERE extract = %s", (extract,))]
            result = merge_extract(conn, get_spec(extract), ids, s)
            assert (result.inserted, result.updated, result.deleted) == (0, 0, 0), result
        conn.commit()
    again = {t: q(s, sql.SQL("SELECT t::text FROM {} t").format(sql.Identifier("core", t))) for t in snapshot}
    assert {t: sorted(map(str, v)) for t, v in again.items()} == {t: sorted(map(str, v)) for t, v in snapshot.items()}


def test_a_b_a_gives_three_versions(pipeline_settings):
    s = pipeline_settings
    # a filler patient whose email differs per batch keeps the files' bytes distinct (identical bytes
    # under another name are a 'duplicate' file and are not loaded again)
    for when, family in ((T1, "Smith"), (T2, "Jones"), (T3, "Smith")):
        load_rows(s, "Patients", [patient(1, family), patient(2, email=f"{when:%d}@x.nz")], when)
    assert [(v[0], v[2], v[3], v[4]) for v in versions(s, 1)] == [
        ("Smith", utc(T1), utc(T2), False), ("Jones", utc(T2), utc(T3), False), ("Smith", utc(T3), None, True)]


def test_late_batch_inserts_history_in_the_middle(pipeline_settings):
    s = pipeline_settings
    for when, family in ((T1, "A"), (T2, "B"), (T3, "C")):
        put_rows(s, "Patients", [patient(1, family), patient(2, "Same")], when)
    put_rows(s, "Appointments", [appointment(10, 1, T2 + timedelta(days=1))], T3)
    snapshots = []
    for order in ((T1, T3, T2), (T1, T2, T3), (T3, T2, T1)):
        reset_data(s.database_url.get_secret_value())
        for when in order:
            load_date(s, when.date())
        snapshots.append(core_snapshot(s))
        assert [(v[0], v[2], v[3], v[4]) for v in versions(s, 1)] == [
            ("A", utc(T1), utc(T2), False), ("B", utc(T2), utc(T3), False), ("C", utc(T3), None, True)]
        assert [(v[0], v[2]) for v in versions(s, 2)] == [("Same", utc(T1))]
        # the appointment (T2 + 1 day) points at version B whatever the order
        assert q(s, "SELECT p.family_name FROM core.fact_appointment a JOIN core.dim_patient p "
                    "USING (patient_key)") == [("B",)]
    assert snapshots[0] == snapshots[1] == snapshots[2]


def test_fact_newest_version_wins(pipeline_settings):
    s = pipeline_settings
    load_rows(s, "Patients", [patient(1)], T1)
    load_rows(s, "Appointments", [appointment(10, 1, T1, "Completed")], T3)
    load_rows(s, "Appointments", [appointment(10, 1, T1, "Booked"), appointment(11, 1, T1)], T2)  # older
    assert q(s, "SELECT appointment_id, appointment_status, date_extracted::text FROM core.fact_appointment "
                "ORDER BY 1") == [(10, "Completed", utc(T3)), (11, "Booked", utc(T2))]
    load_rows(s, "Appointments", [appointment(10, 1, T1, "Cancelled")], T4)  # newer
    assert q(s, "SELECT appointment_status FROM core.fact_appointment WHERE appointment_id = 10") == [("Cancelled",)]


def test_inferred_member_then_real_member(pipeline_settings):
    s = pipeline_settings
    put_rows(s, "Appointments", [appointment(10, 7, T3)], T2)
    put_rows(s, "Patients", [patient(7, "Real")], T1)
    first = load_date(s, T2.date())
    assert first["merge"]["inferred_members"] >= 1
    assert first["merge"]["extracts"]["Appointments"]["inferred"]["Patients"] == 1
    inferred = q(s, "SELECT family_name, effective_from::text, is_current, is_inferred, load_file_id, row_number "
                    "FROM core.dim_patient WHERE patient_id = 7")
    assert inferred[0][:4] == (None, "-infinity", True, True)
    assert q(s, "SELECT count(*) FROM core.fact_appointment a JOIN core.dim_patient p USING (patient_key) "
                "WHERE p.is_inferred") == [(1,)]
    assert q(s, "SELECT observed FROM etl.dq_results WHERE check_name = 'inferred_members' "
                "AND detail ->> 'dimension' = 'Patients'")[0][0] == 1
    load_date(s, T1.date())  # the real member arrives (an older batch)
    assert [v[:6] for v in versions(s, 7)] == [("Real", "a@example.org", utc(T1), None, True, False)]
    assert q(s, "SELECT p.family_name FROM core.fact_appointment JOIN core.dim_patient p USING (patient_key)") == [("Real",)]
    late = core_snapshot(s)
    reset_data(s.database_url.get_secret_value())
    load_date(s, T1.date())
    load_date(s, T2.date())
    assert core_snapshot(s)["dim_patient"] == late["dim_patient"]
    assert core_snapshot(s)["fact_appointment"] == late["fact_appointment"]


def test_fk_points_at_version_valid_at_main_date(pipeline_settings):
    s = pipeline_settings
    load_rows(s, "Patients", [patient(1, "A")], T1)
    load_rows(s, "Patients", [patient(1, "C")], T3)
    load_rows(s, "Appointments", [
        appointment(20, 1, T1 - timedelta(days=30)),  # before every version: the earliest
        appointment(21, 1, T1 + timedelta(days=8)),   # between T2 and T3
        appointment(22, 1, T3 + timedelta(hours=1)),
    ], T4)

    def fk():
        return q(s, "SELECT a.appointment_id, p.family_name FROM core.fact_appointment a "
                    "JOIN core.dim_patient p USING (patient_key) ORDER BY 1")

    assert fk() == [(20, "A"), (21, "A"), (22, "C")]
    load_rows(s, "Patients", [patient(1, "B")], T2)  # late version: facts are re-pointed
    assert fk() == [(20, "A"), (21, "B"), (22, "C")]
    assert q(s, "SELECT DISTINCT date_key FROM core.fact_appointment WHERE appointment_id = 22") == [
        (int((T3 + timedelta(hours=1)).strftime("%Y%m%d")),)]
    assert q(s, "SELECT nz_financial_year, nz_financial_quarter, iso_week, weekday FROM core.dim_date "
                "WHERE date = '2025-08-24'") == [(2026, 1, 34, 7)]


def test_nhi_is_hashed_never_plain_and_invalid_ones_are_flagged(pipeline_settings):
    s = pipeline_settings
    batches = build_series(seed=5, patients=6, deltas=1)
    write_s3([f for b in batches for f in b.files], s.s3_bucket, "", make_client(s))
    for b in batches:
        load_date(s, b.date_extracted.date())
    load_rows(s, "Patients", [patient(900, nhi=" zzz0044 "), patient(901, nhi=" zbn77vl")], T4)
    nhis = {r[0].strip().upper() for t in ("patients", "providers", "next_of_kin")
            for r in q(s, sql.SQL("SELECT DISTINCT nhi_number FROM {} WHERE nhi_number IS NOT NULL").format(
                sql.Identifier("stg", t)))}
    assert len(nhis) > 5 and "ZZZ0044" in nhis
    text_columns = q(s, "SELECT table_name, column_name FROM information_schema.columns "
                        "WHERE table_schema = 'core' AND data_type IN ('text', 'character varying')")
    for table, column in text_columns:
        hits = q(s, sql.SQL("SELECT count(*) FROM {} WHERE upper(btrim({}::text)) = ANY(%s)").format(
            sql.Identifier("core", table), sql.Identifier(column)), (sorted(nhis),))
        assert hits == [(0,)], (table, column)
    expected = hmac.new(b"test-nhi-hmac-key-of-at-least-32-bytes", b"ZZZ0044", hashlib.sha256).hexdigest()
    assert q(s, "SELECT nhi_hash, nhi_valid FROM core.dim_patient WHERE patient_id = 900") == [(expected, False)]
    assert q(s, "SELECT nhi_valid FROM core.dim_patient WHERE patient_id = 901") == [(True,)]
    assert q(s, "SELECT observed FROM etl.dq_results WHERE check_name = 'nhi_invalid' AND extract = 'Patients' "
                "ORDER BY dq_result_id DESC LIMIT 1") == [(1,)]


def test_missing_hmac_key_is_a_configuration_error(pipeline_settings):
    s = pipeline_settings
    put_rows(s, "Patients", [patient(1)], T1)
    nokey = s.model_copy(update={"nhi_hmac_key": None})
    with pytest.raises(ConfigurationError, match="NHI_HMAC_KEY"):
        run(nokey, Selection(kind="backfill", date_from=T1.date(), date_to=T1.date()))
    assert q(s, "SELECT status FROM etl.load_run_files") == [("staged",)]
    assert q(s, "SELECT count(*) FROM core.dim_patient") == [(0,)]
    (status, error), = q(s, "SELECT status, error FROM etl.load_runs")
    assert status == "failed" and "NHI_HMAC_KEY" in error
    # With the key the next run merges what was left staged.
    summary = run(s, Selection(kind="backfill", date_from=T1.date(), date_to=T1.date()))
    assert summary["status"] == "succeeded" and summary["merge"]["files_merged"] == 1
    assert q(s, "SELECT count(*) FROM core.dim_patient") == [(1,)]


def test_every_core_row_has_resolvable_lineage(pipeline_settings):
    s = pipeline_settings
    batches = build_series(seed=7, patients=6, deltas=1)
    write_s3([f for b in batches for f in b.files], s.s3_bucket, "", make_client(s))
    for b in reversed(batches):
        load_date(s, b.date_extracted.date())
    put_rows(s, "Appointments", [appointment(99999, 424242, T3)], T3)  # an inferred member too
    load_date(s, T3.date())
    assert q(s, "SELECT count(*) FROM core.dim_patient WHERE is_inferred") == [(1,)]
    for spec in load_all().values():
        missing = q(s, sql.SQL(
            "SELECT count(*), count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM etl.load_run_files f "
            "WHERE f.file_id = t.load_file_id AND f.s3_version_id = t.s3_version_id AND f.file_hash = t.file_hash "
            "AND f.date_extracted = t.date_extracted) OR NOT EXISTS (SELECT 1 FROM etl.load_runs r "
            "WHERE r.load_run_id = t.load_run_id)) FROM {} t").format(sql.Identifier("core", spec.core.table)))
        total, bad = missing[0]
        assert total > 0 and bad == 0, spec.core.table


def _delete_scenario(s):
    put_rows(s, "Patients", [patient(1), patient(2)], T1)
    put_rows(s, "Appointments", [appointment(10, 1, T1), appointment(11, 2, T1)], T1)
    put_rows(s, "Patients", [patient(1)], T2)
    put_rows(s, "Appointments", [appointment(10, 1, T1)], T2)


def test_full_file_deletes_off_by_default(clean_config):
    s = clean_config
    _delete_scenario(s)
    set_config(s, "*", "full_batches", [T1.strftime("%y%m%d%H%M"), T2.strftime("%y%m%d%H%M")])
    load_date(s, T1.date())
    summary = load_date(s, T2.date())
    assert summary["merge"]["extracts"]["Patients"]["full_file_deletes"] is None  # the flag is off: not used
    assert q(s, "SELECT count(*) FROM core.dim_patient WHERE is_removed") == [(0,)]
    assert q(s, "SELECT count(*) FROM core.fact_appointment WHERE is_removed") == [(0,)]


def test_full_file_deletes_remove_absent_rows_order_independently(clean_config):
    s = clean_config
    _delete_scenario(s)
    set_config(s, "*", "full_file_deletes", True)
    set_config(s, "*", "full_batches", [T1.strftime("%y%m%d%H%M"), T2.strftime("%y%m%d%H%M")])
    snapshots = []
    for order in ((T1, T2), (T2, T1)):
        reset_data(s.database_url.get_secret_value())
        for when in order:
            summary = load_date(s, when.date())
            # each use of the full-vs-delta flag is on record in the run's summary
            assert summary["merge"]["extracts"]["Patients"]["full_file_deletes"] == [
                T1.strftime("%y%m%d%H%M"), T2.strftime("%y%m%d%H%M")]
        assert [(v[2], v[3], v[4], v[6]) for v in versions(s, 2)] == [
            (utc(T1), utc(T2), False, False), (utc(T2), None, True, True)]
        assert [v[6] for v in versions(s, 1)] == [False]
        assert q(s, "SELECT appointment_id, is_removed, removed_at::text FROM core.fact_appointment ORDER BY 1") == [
            (10, False, None), (11, True, utc(T2))]
        snapshots.append(core_snapshot(s))
    assert snapshots[0] == snapshots[1]
    # a newer delta brings patient 2 and appointment 11 back: by definition (removed iff the newest full
    # file lacks the key and no version is newer) the key is no longer removed, and its unchanged
    # attributes collapse into the first version again
    load_rows(s, "Patients", [patient(2)], T3)
    load_rows(s, "Appointments", [appointment(11, 2, T1)], T3)
    # (lineage: T1's version gave these values, T3's repeated them)
    assert [(v[2], v[3], v[4], v[6], v[7]) for v in versions(s, 2)] == [(utc(T1), None, True, False, utc(T1))]
    assert q(s, "SELECT is_removed FROM core.fact_appointment WHERE appointment_id = 11") == [(False,)]


def test_trace_goes_from_core_versions_to_stg_raw_files_and_runs(pipeline_settings):
    from worker.pipeline.trace import trace

    s = pipeline_settings
    load_rows(s, "Patients", [patient(1, "A"), patient(2)], T1)
    load_rows(s, "Patients", [patient(1, "B")], T2)
    load_rows(s, "Appointments", [appointment(10, 1, T2 + timedelta(days=1))], T3)
    with connect(s) as conn:
        got = trace(conn, "dim_patient", ["1", str(PRACTICE), str(PER_ORG)])
        fact = trace(conn, "core.fact_appointment", ["10", str(PRACTICE), str(PER_ORG)])
    assert got["extract"] == "Patients"
    assert [v["effective_from"][:10] for v in got["core"]] == ["2025-08-09", "2025-08-16"]
    assert [r["gave_core_values"] for r in got["stg"]] == [True, True]
    assert len(got["raw"]) == 2 and all(r["staged"] for r in got["raw"])
    assert {f["s3_key"] for f in got["files"]} == {r[0] for r in q(
        s, "SELECT s3_key FROM etl.load_run_files WHERE extract = 'Patients'")}
    assert {r["load_run_id"] for r in got["runs"]} == {1, 2}
    ref = fact["core"][0]["references"]["patient_key"]
    assert ref["table"] == "dim_patient" and ref["version"]["effective_from"][:10] == "2025-08-16"
    assert fact["core"][0]["references"]["practice_key"]["version"]["is_inferred"] is True
    with pytest.raises(ValueError):
        with connect(s) as conn:
            trace(conn, "dim_patient", ["1"])
