"""Least privilege, proven by trying: every role against every schema and operation, the de-identified
core recomputed from the contracts, nothing for PUBLIC.

Each role is tried through a real login holding only that role (grant-login), connected directly. An
attempt runs in a transaction that is always rolled back. "Denied" means Postgres refused the
privilege ("permission denied", "must be owner"); any other outcome, success or a later error (a
row-level policy, a view that cannot be truncated), means the privilege was there.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from contracts import naming
from contracts.model import Identification, PiiClass
from contracts.registry import load_all
from tests.integration.worker.io.helpers import connect_as, make_login

pytestmark = pytest.mark.integration

S, INS, U, D, T, C, A = "select", "insert", "update", "delete", "truncate", "create", "alter"
EVERYTHING = {S, INS, U, D, T, C, A}
DML = {S, INS, U, D}

# (schema, relation, a column to write) per kind of object; public and deid have no data tables.
TARGETS = {
    "raw": ("raw", "patients_raw", "patient_id"),
    "stg": ("stg", "patients", "title"),
    "rejects": ("etl", "rejects_patients", "row_text"),
    "etl.load_runs": ("etl", "load_runs", "error"),
    "etl.load_run_files": ("etl", "load_run_files", "error"),
    "etl.reprocess_requests": ("etl", "reprocess_requests", "reason"),
    "etl.config": ("etl", "config", "value"),
    "etl.dq_results": ("etl", "dq_results", "detail"),
    "etl.nhi_key_versions": ("etl", "nhi_key_versions", "retired_at"),
    "etl.login_organisations": ("etl", "login_organisations", "bound_by"),
    "core.dim_patient": ("core", "dim_patient", "title"),
    "core.fact_appointment": ("core", "fact_appointment", "appointment_type"),
    "core.dim_date": ("core", "dim_date", "weekday_name"),
    "deid.dim_patient": ("deid", "dim_patient", "title"),
    "public": ("public", None, None),
}

# The allowed cells, written out (not derived from the code under test). Anything absent is denied.
EXPECTED: dict[str, dict[str, set[str]]] = {
    "etl_writer": {
        "raw": DML, "stg": DML, "rejects": DML,
        "etl.load_runs": {S, INS, U}, "etl.load_run_files": {S, INS, U}, "etl.reprocess_requests": {S, INS},
        "etl.config": DML, "etl.dq_results": DML, "etl.nhi_key_versions": {S, INS, U},
        "core.dim_patient": DML, "core.fact_appointment": {S, INS, U}, "core.dim_date": {S, INS},
    },
    # core.dim_date holds no identifier: all its columns are granted, so SELECT * works there only.
    "app_reader": {"deid.dim_patient": {S}, "core.dim_date": {S}},
    "identified_reader": {"core.dim_patient": {S}, "core.fact_appointment": {S}, "core.dim_date": {S},
                          "deid.dim_patient": {S}},
    "engineer": {name: {S} for name in ("raw", "stg", "rejects", "etl.load_runs", "etl.load_run_files",
                                        "etl.reprocess_requests", "etl.config", "etl.dq_results",
                                        "etl.nhi_key_versions", "etl.login_organisations")},
    # The owner (what migrations run as) may do everything to its own objects, but not create in public.
    "owner": {**{name: set(EVERYTHING) for name in TARGETS if name not in ("public", "deid.dim_patient")},
              "deid.dim_patient": {S, INS, U, D, C}},
}


def _statement(op: str, schema: str, table: str | None, column: str | None) -> sql.Composable:
    if op == C:
        probe = sql.Identifier(schema, "matrix_probe")
        if schema == "deid":
            return sql.SQL("CREATE VIEW {} AS SELECT 1 AS x").format(probe)
        return sql.SQL("CREATE TABLE {} (x int)").format(probe)
    assert table is not None and column is not None
    t, c = sql.Identifier(schema, table), sql.Identifier(column)
    return {
        S: sql.SQL("SELECT * FROM {t} LIMIT 0"),
        INS: sql.SQL("INSERT INTO {t} ({c}) SELECT NULL WHERE false"),
        U: sql.SQL("UPDATE {t} SET {c} = NULL WHERE false"),
        D: sql.SQL("DELETE FROM {t} WHERE false"),
        T: sql.SQL("TRUNCATE {t}"),
        A: sql.SQL("ALTER TABLE {t} ADD COLUMN matrix_probe int"),
    }[op].format(t=t, c=c)


def _allowed(conn: psycopg.Connection, statement: sql.Composable) -> bool:
    conn.execute("BEGIN")
    try:
        conn.execute(statement)
        return True
    except psycopg.errors.InsufficientPrivilege as exc:
        # "permission denied ..." or "must be owner of ..."; a row-level policy refusing a row means
        # the privilege itself was there.
        return "row-level security" in str(exc)
    except psycopg.Error:
        return True  # got past the privilege check (e.g. a view cannot be truncated)
    finally:
        conn.execute("ROLLBACK")


def _ops(name: str) -> set[str]:
    schema, table, _ = TARGETS[name]
    if table is None:
        return {C}
    if schema == "deid":
        return {S, INS, U, D, C}
    return set(EVERYTHING)


@pytest.fixture(scope="module")
def role_connections(migrated_db):
    conns = {}
    for role in ("etl_writer", "app_reader", "identified_reader", "engineer"):
        conns[role] = connect_as(migrated_db, make_login(migrated_db, f"matrix_{role}", role))
    owner = psycopg.connect(migrated_db.url, autocommit=True)
    owner.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(migrated_db.role_prefix + "indici_owner")))
    conns["owner"] = owner
    yield conns
    for conn in conns.values():
        conn.close()


def test_role_matrix(role_connections):
    """Every role x every target x every operation: exactly the expected cells succeed."""
    wrong = []
    for role, conn in role_connections.items():
        for name, (schema, table, column) in TARGETS.items():
            for op in sorted(_ops(name)):
                expected = op in EXPECTED[role].get(name, set())
                if _allowed(conn, _statement(op, schema, table, column)) != expected:
                    wrong.append(f"{role} {op} {name}: {'denied' if expected else 'allowed'}, expected "
                                 f"{'allowed' if expected else 'denied'}")
    assert not wrong, "\n".join(wrong)


def test_the_logins_hold_only_their_role(migrated_db, role_connections):
    """The matrix proves nothing if a login inherits more than its role."""
    for role, conn in role_connections.items():
        if role == "owner":
            continue
        held = {r[0] for r in conn.execute(
            "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
            "WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = session_user)")}
        assert held == {migrated_db.role_prefix + role}
        flags = conn.execute("SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles "
                             "WHERE rolname = session_user").fetchone()
        assert flags == (False, False, False, False)


def _withheld_from_contract(spec) -> set[str]:
    """Recomputed here from the contracts' classes: a direct or quasi identifier's core column (an NHI
    column's hash) is not for app_reader; free text never reaches core."""
    out = set()
    for col in spec.columns:
        if col.identification is Identification.NONE or col.pii is PiiClass.FREE_TEXT:
            continue
        out.add(naming.nhi_hash_column(col.column) if col.pii is PiiClass.NHI else col.column)
    return out


def test_app_reader_grants_and_deid_views_follow_the_contracts(migrated_db):
    reader = migrated_db.role_prefix + "app_reader"
    with psycopg.connect(migrated_db.url) as conn:
        for spec in load_all().values():
            table = spec.core.table
            columns = {r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'core' "
                "AND table_name = %s", (table,))}
            granted = {r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.column_privileges WHERE table_schema = 'core' "
                "AND table_name = %s AND grantee = %s AND privilege_type = 'SELECT'", (table, reader))}
            view = [r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = 'deid' "
                "AND table_name = %s ORDER BY ordinal_position", (table,))]
            withheld = _withheld_from_contract(spec)
            assert withheld <= columns, f"{table}: {withheld - columns}"
            assert granted == columns - withheld, table
            assert set(view) == granted, table
            for col in spec.columns:  # quasi identifiers reach app_reader only coarsened
                if col.coarsening is not None:
                    assert f"{col.column}_{col.coarsening.value}" in granted and col.column not in granted
        table_grants = conn.execute(
            "SELECT count(*) FROM information_schema.table_privileges WHERE table_schema = 'core' "
            "AND grantee = %s", (reader,)).fetchone()[0]
        assert table_grants == 0, "app_reader must hold column grants only on core"


def test_the_identifiers_the_audit_found_are_gone_for_app_reader(migrated_db):
    """Spot checks written out from issue 10 (names, full dates of birth, addresses, phones, emails,
    patient names in facts)."""
    reader = migrated_db.role_prefix + "app_reader"

    def granted(table: str) -> set[str]:
        with psycopg.connect(migrated_db.url) as conn:
            return {r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.column_privileges WHERE table_schema = 'core' "
                "AND table_name = %s AND grantee = %s", (table, reader))}

    patient = granted("dim_patient")
    for hidden in ("first_name", "family_name", "full_name", "preferred_name", "dob", "death_date", "nhi_hash",
                   "permanent_address", "permanent_address_postal_code", "permanent_address_latitude",
                   "postal_address", "cell_number", "day_phone", "email", "emergency_contact_name",
                   "chart_number", "community_service_card_no", "permanent_address_meshblock"):
        assert hidden not in patient, hidden
    for shown in ("patient_key", "patient_id", "dob_year", "death_date_year", "gender", "ethcode",
                  "permanent_address_domicile_code", "permanent_address_deprivation_quintile", "nhi_valid",
                  "nhi_key_version", "age_group", "is_current", "per_org_id", "s3_version_id"):
        assert shown in patient, shown
    assert "patient" not in granted("fact_allergy") and "allergy_id" in granted("fact_allergy")
    assert "patient_name" not in granted("fact_inbox")
    assert "permanent_address_latitude" not in granted("fact_appointment")
    assert {"first_name", "dob", "email"}.isdisjoint(granted("dim_provider"))


def test_deid_views_do_not_bypass_row_level_security(migrated_db):
    with psycopg.connect(migrated_db.url) as conn:
        views = conn.execute(
            "SELECT c.relname, c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'deid' AND c.relkind = 'v'").fetchall()
        core = {s.core.table for s in load_all().values()} | {"dim_date"}
        assert {v[0] for v in views} == core
        for name, options in views:
            assert "security_invoker=true" in (options or []), name
        unprotected = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'core' AND c.relkind IN ('r', 'p') AND NOT c.relrowsecurity "
            "AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'per_org_id')"
        ).fetchall()
        assert unprotected == []


def test_nothing_is_granted_to_public(migrated_db):
    with psycopg.connect(migrated_db.url) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name, privilege_type FROM information_schema.table_privileges "
            "WHERE grantee = 'PUBLIC' AND table_schema IN ('raw', 'stg', 'etl', 'core', 'deid', 'public')").fetchall()
        assert tables == []
        for schema in ("raw", "stg", "etl", "core", "deid"):
            assert not conn.execute("SELECT has_schema_privilege('public', %s, 'USAGE')", (schema,)).fetchone()[0]
        assert not conn.execute(
            "SELECT has_function_privilege('public', 'core.reader_per_org_ids()', 'EXECUTE')").fetchone()[0]
        for privilege in ("CONNECT", "TEMPORARY", "CREATE"):
            assert not conn.execute("SELECT has_database_privilege('public', current_database(), %s)",
                                    (privilege,)).fetchone()[0], privilege


def test_apply_access_is_idempotent(migrated_db):
    from worker.pipeline.migrate import sync_access

    def snapshot():
        with psycopg.connect(migrated_db.url) as conn:
            return conn.execute(
                "SELECT c.relname, c.relacl::text, c.relrowsecurity, "
                "(SELECT array_agg(polname ORDER BY polname) FROM pg_policy p WHERE p.polrelid = c.oid), "
                "(SELECT array_agg(attname || coalesce(attacl::text, '') ORDER BY attnum) FROM pg_attribute a "
                " WHERE a.attrelid = c.oid AND a.attnum > 0) "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname IN ('raw', 'stg', 'etl', 'core', 'deid') ORDER BY 1").fetchall()

    before = snapshot()
    sync_access(migrated_db.settings())
    assert snapshot() == before
