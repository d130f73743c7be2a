"""Apply the access model of contracts/sql/access.py to a database (and take it away again).

`apply_access` runs in migration 0006 and after every `migrate` to head (worker/pipeline/migrate.py),
inside the caller's transaction, on a connection of the migrating login (the database owner with
CREATEROLE, or a superuser) that is a member of the owner role. It is idempotent: running it again
changes nothing, and a contract column added later gets its grant and its place in the deid view.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from contracts import naming
from contracts.registry import load_all
from contracts.schema import metadata
from contracts.sql import access as A
from contracts.sql import merge as M
from worker.io.roles import Roles, roles
from worker.settings import Settings


def _as_owner(conn: psycopg.Connection, r: Roles) -> None:
    conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(r.owner)))


def _restore_role(conn: psycopg.Connection, role: str, r: Roles) -> None:
    if role == r.owner:
        _as_owner(conn, r)
    else:
        conn.execute("RESET ROLE")


def apply_access(conn: psycopg.Connection, settings: Settings) -> None:
    """Privileges, row-level security and the deid views, as generated from the contracts."""
    r = roles(settings)
    tables = A.core_tables(load_all(), metadata())
    row = conn.execute("SELECT current_user, current_database()").fetchone()
    assert row is not None
    role_before, database = row
    conn.execute("RESET ROLE")
    for statement in A.database_statements(r, database):
        conn.execute(statement)
    _as_owner(conn, r)
    for statement in [*A.privilege_statements(r, tables), *A.function_statements(r), *A.policy_statements(r, tables),
                      *M.lookup_index_function_statements(load_all(), r.owner, r.writer)]:
        conn.execute(statement)
    _sync_views(conn, r, tables)
    _restore_role(conn, role_before, r)


def _sync_views(conn: psycopg.Connection, r: Roles, tables: list[A.CoreTable]) -> None:
    wanted = {t.name for t in tables}
    existing = {row[0] for row in conn.execute(
        "SELECT table_name FROM information_schema.views WHERE table_schema = %s", (A.DEID,))}
    for name in sorted(existing - wanted):  # the core table is gone
        conn.execute(sql.SQL("DROP VIEW {}").format(sql.Identifier(A.DEID, name)))
    for table in tables:
        try:
            # OR REPLACE keeps views others built on this one; it fails when a column went away.
            with conn.transaction():
                conn.execute(A.view_statement(table, replace=True))
        except psycopg.errors.InvalidTableDefinition:
            conn.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(sql.Identifier(A.DEID, table.name)))
            conn.execute(A.view_statement(table, replace=False))
        conn.execute(A.view_comment(table))
        conn.execute(A.view_grant(r, table))


def remove_access(conn: psycopg.Connection, settings: Settings) -> None:
    """Undo apply_access (migration 0006's downgrade): the grants of revision 0001 come back."""
    r = roles(settings)
    tables = A.core_tables(load_all(), metadata())
    row = conn.execute("SELECT current_user, current_database()").fetchone()
    assert row is not None
    role_before, database = row
    owner, writer, reader = (sql.Identifier(x) for x in (r.owner, r.writer, r.reader))
    _as_owner(conn, r)
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(A.DEID)))
    existing = {row[0] for row in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = %s", (naming.CORE,))}
    for table in tables:
        if table.name not in existing:
            continue
        t = sql.Identifier(naming.CORE, table.name)
        if table.has_organisation:
            for name in (A.READER_POLICY, *A.WRITER_POLICIES):
                conn.execute(sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(sql.Identifier(name), t))
            conn.execute(sql.SQL("ALTER TABLE {} DISABLE ROW LEVEL SECURITY").format(t))
        conn.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(t, reader))
    conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(sql.Identifier(*A.READER_ORGS_FUNCTION)))
    conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}(text, boolean)").format(sql.Identifier(*M.LOOKUP_INDEX_FUNCTION)))
    conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA core TO {}").format(reader))
    conn.execute(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA core GRANT SELECT ON TABLES TO {}").format(
        owner, reader))
    conn.execute(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} GRANT EXECUTE ON FUNCTIONS TO PUBLIC").format(owner))
    for schema in naming.SCHEMAS:
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} TO {}").format(
            sql.Identifier(schema), writer))
    conn.execute("RESET ROLE")
    conn.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO PUBLIC").format(sql.Identifier(database)))
    _restore_role(conn, role_before, r)
