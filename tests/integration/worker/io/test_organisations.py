"""Organisation boundaries: the service loads two organisations and three practices as an etl_writer
login (under row-level security), and each reader login sees exactly the organisations it is bound to."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql
from pydantic import SecretStr

from contracts.registry import load_all
from tests.integration.worker.io.helpers import connect_as, login_url, make_login
from tests.integration.worker.pipeline.helpers import put_file, run
from worker.io.db import connect
from worker.io.logins import LoginError, bind_org, unbind_org
from worker.io.s3 import make_client
from worker.synth import build_series

pytestmark = pytest.mark.integration

ORG_A, ORG_B = 685146, 700001
PRACTICES = [(ORG_A, 535), (ORG_A, 536), (ORG_B, 100)]
CORE_TABLES = sorted(s.core.table for s in load_all().values())


@pytest.fixture(scope="module")
def loaded(migrated_db, s3_server, tmp_path_factory):
    """Two organisations, three practices, loaded by the service logged in as an etl_writer login."""
    import uuid

    from tests.integration.worker.pipeline.helpers import reset_data

    reset_data(migrated_db.url)
    bucket = f"indici-orgs-{uuid.uuid4().hex[:10]}"
    client = s3_server.client()
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "ap-southeast-2"})
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    service = make_login(migrated_db, "orgs_service", "etl_writer")
    settings = migrated_db.settings(
        S3_BUCKET=bucket, S3_ENDPOINT_URL=s3_server.endpoint_url, AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing", NHI_HMAC_KEY="test-nhi-hmac-key-of-at-least-32-bytes",
    ).model_copy(update={"database_url": SecretStr(login_url(migrated_db.url, service))})
    (batch,) = build_series(seed=11, patients=8, practices=PRACTICES, deltas=0)
    s3 = make_client(settings)
    for f in batch.files:
        put_file(s3, bucket, f.name, f.data)
    summary = run(settings)
    assert summary["status"] == "succeeded", summary
    with connect(settings) as conn:  # it really ran as the login
        assert conn.execute("SELECT session_user").fetchone()[0] == service
    return settings


def _by_org(conn: psycopg.Connection, schema: str, table: str) -> dict[int, int]:
    rows = conn.execute(sql.SQL("SELECT per_org_id, count(*) FROM {} GROUP BY 1").format(
        sql.Identifier(schema, table))).fetchall()
    return dict(rows)


@pytest.fixture(scope="module")
def truth(migrated_db, loaded) -> dict[str, dict[int, int]]:
    with psycopg.connect(migrated_db.url) as conn:  # the superuser sees everything
        counts = {t: _by_org(conn, "core", t) for t in CORE_TABLES}
    assert set(counts["dim_patient"]) == {ORG_A, ORG_B}
    assert set(counts["fact_appointment"]) == {ORG_A, ORG_B}
    return counts


def _expected(truth, table: str, orgs: set[int]) -> dict[int, int]:
    return {org: n for org, n in truth[table].items() if org in orgs}


@pytest.mark.parametrize("role, schema", [("app_reader", "deid"), ("identified_reader", "core")])
def test_a_reader_sees_only_its_organisations(migrated_db, truth, role, schema):
    one = make_login(migrated_db, f"org_a_{role}", role, orgs=(ORG_A,))
    both = make_login(migrated_db, f"org_ab_{role}", role, orgs=(ORG_A, ORG_B))
    none = make_login(migrated_db, f"org_none_{role}", role)
    for login, orgs in ((one, {ORG_A}), (both, {ORG_A, ORG_B}), (none, set())):
        with connect_as(migrated_db, login) as conn:
            for table in CORE_TABLES:
                assert _by_org(conn, schema, table) == _expected(truth, table, orgs), (login, table)


def test_identified_reader_sees_names_and_app_reader_does_not(migrated_db, truth):
    identified = make_login(migrated_db, "org_b_identified", "identified_reader", orgs=(ORG_B,))
    with connect_as(migrated_db, identified) as conn:
        names = conn.execute("SELECT count(family_name), count(dob), count(nhi_hash) FROM core.dim_patient "
                             "WHERE NOT is_inferred").fetchone()
        assert min(names) > 0
    analyst = make_login(migrated_db, "org_b_analyst", "app_reader", orgs=(ORG_B,))
    with connect_as(migrated_db, analyst) as conn:
        assert conn.execute("SELECT count(dob_year) FROM deid.dim_patient").fetchone()[0] > 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT family_name FROM core.dim_patient")


def test_unbinding_takes_effect_at_once_and_is_audited(migrated_db, truth):
    login = make_login(migrated_db, "org_flip", "app_reader", orgs=(ORG_A,))
    settings = migrated_db.settings()
    with connect_as(migrated_db, login) as reader:
        assert _by_org(reader, "deid", "dim_patient") == _expected(truth, "dim_patient", {ORG_A})
        with psycopg.connect(migrated_db.url) as admin:
            assert unbind_org(admin, settings, login, ORG_A, "test") == []
            assert bind_org(admin, settings, login, ORG_B, "test") == [ORG_B]
            admin.commit()
        assert _by_org(reader, "deid", "dim_patient") == _expected(truth, "dim_patient", {ORG_B})
    with psycopg.connect(migrated_db.url) as admin:
        changes = admin.execute("SELECT per_org_id, action, changed_by FROM etl.login_organisation_changes "
                                "WHERE login = %s ORDER BY change_id", (login,)).fetchall()
    assert [c[:2] for c in changes][-3:] == [(ORG_A, "bind"), (ORG_A, "unbind"), (ORG_B, "bind")]


def test_only_readers_are_bound(migrated_db, loaded):
    service = make_login(migrated_db, "orgs_service", "etl_writer")
    with psycopg.connect(migrated_db.url) as admin:
        with pytest.raises(LoginError, match="not a login holding"):
            bind_org(admin, migrated_db.settings(), service, ORG_A, "test")
        with pytest.raises(LoginError, match="no login named"):
            bind_org(admin, migrated_db.settings(), migrated_db.role_prefix + "nobody", ORG_A, "test")


def test_a_reader_cannot_widen_its_own_view(migrated_db, truth):
    login = make_login(migrated_db, "org_sneaky", "identified_reader", orgs=(ORG_A,))
    with connect_as(migrated_db, login) as conn:
        for attempt in (
            "INSERT INTO etl.login_organisations (login, per_org_id, bound_by) VALUES (session_user, 700001, 'me')",
            "SELECT * FROM etl.login_organisations",
            "SET ROLE NONE",
        ):
            try:
                conn.execute(attempt)
            except psycopg.errors.InsufficientPrivilege:
                continue
            assert attempt == "SET ROLE NONE"  # allowed, and changes nothing (bound by login)
        assert _by_org(conn, "core", "dim_patient") == _expected(truth, "dim_patient", {ORG_A})


def test_the_service_writes_a_row_only_under_its_files_organisation(migrated_db, loaded):
    """Its policies allow its merges and nothing more: no row under another organisation or practice
    than its lineage file's, and no deleting facts."""
    with psycopg.connect(loaded.database_url.get_secret_value(), autocommit=True) as conn:
        file_id, org = conn.execute(
            "SELECT file_id, per_org_id FROM etl.load_run_files WHERE extract = 'Appointments' AND per_org_id = %s "
            "LIMIT 1", (ORG_A,)).fetchone()
        key = conn.execute("SELECT appointment_key FROM core.fact_appointment WHERE load_file_id = %s LIMIT 1",
                           (file_id,)).fetchone()[0]
        for statement in (
            "UPDATE core.fact_appointment SET per_org_id = 700001 WHERE appointment_key = %(k)s",
            "UPDATE core.fact_appointment SET practice_id = 100 WHERE appointment_key = %(k)s",
            "INSERT INTO core.fact_appointment (appointment_id, practice_id, per_org_id, schedule_date, "
            " load_file_id, row_number, s3_version_id, file_hash, date_extracted, date_to, load_run_id) "
            "SELECT appointment_id + 1000000, 100, 700001, schedule_date, load_file_id, row_number, s3_version_id, "
            " file_hash, date_extracted, date_to, load_run_id FROM core.fact_appointment WHERE appointment_key = %(k)s",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
                conn.execute(statement, {"k": key})
        # The same update under its own organisation is what merges do, and it is allowed.
        assert conn.execute("UPDATE core.fact_appointment SET per_org_id = %(o)s WHERE appointment_key = %(k)s",
                            {"o": org, "k": key}).rowcount == 1
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
            conn.execute("DELETE FROM core.fact_appointment WHERE appointment_key = %s", (key,))
