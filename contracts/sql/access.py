"""Contracts -> who may read and write what: privileges, row-level security and the de-identified core.

Everything here is derived from the specs (their columns' Identification classes) and the role names,
built with psycopg.sql only. The statements are idempotent; worker/io/access.py applies them, from
migration 0006 and again after every `migrate` (so a column added to a contract later gets its grant).

De-identified core (for app_reader):
  - `withheld_columns(spec)`: core columns made from direct identifiers (names, contacts, addresses,
    the NHI hash, record numbers) and from quasi identifiers (dob, death_date, meshblock);
  - app_reader holds SELECT on every other column of core (column grants) and nothing on the withheld
    ones; quasi identifiers with a coarsening reach it as generated columns (dob -> dob_year);
  - `deid.<core table>`: a view per core table selecting exactly the granted columns, created with
    `security_invoker = true`, so the reader's own column grants and row-level policies apply (a view
    owned by the table owner would otherwise bypass row-level security).

Row-level security on every core table with per_org_id:
  - readers (app_reader, identified_reader) see the rows of the organisations their login is bound to
    (etl.login_organisations, through the SECURITY DEFINER function core.reader_per_org_ids(), so
    readers need no access to etl);
  - the service (etl_writer) reads and updates every row, and may only write a row whose organisation
    and practice agree with those of the file its lineage names (etl.load_run_files); it deletes only
    dimension versions (facts are soft-removed, never deleted);
  - the owner (migrations) is the tables' owner and is not subject to the policies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from psycopg import sql
from sqlalchemy import MetaData

from contracts import naming
from contracts.model import ExtractSpec, Identification, PiiClass, coarsened_column

if TYPE_CHECKING:  # the role names only; contracts do not depend on the worker at run time
    from worker.io.roles import Roles

DEID = "deid"
READER_ORGS_FUNCTION = ("core", "reader_per_org_ids")
# Policy names this module manages (dropped and re-created on every sync).
READER_POLICY = "reader_bound_organisations"
WRITER_POLICIES = ("writer_select", "writer_insert", "writer_update", "writer_delete")
# What the service (etl_writer) may not do to etl tables: delete its audit history (or rewrite the
# append-only ones), or touch who sees which organisation (the owner's to decide, with bind-org).
WRITER_REVOKED = {
    "load_runs": ("DELETE", "TRUNCATE"),
    "load_run_files": ("DELETE", "TRUNCATE"),
    "reprocess_requests": ("UPDATE", "DELETE", "TRUNCATE"),
    "nhi_key_versions": ("DELETE", "TRUNCATE"),
    "nhi_key_rotations": ("UPDATE", "DELETE", "TRUNCATE"),
    "login_organisation_changes": ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"),
    "login_organisations": ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"),
}


def withheld_columns(spec: ExtractSpec) -> set[str]:
    """Core columns of `spec` that app_reader may not read: those made from a direct or quasi
    identifier (an NHI column's hash; its check flag and key version identify nobody)."""
    out: set[str] = set()
    for col in spec.columns:
        if col.identification is Identification.NONE:
            continue
        if col.pii is PiiClass.NHI:
            out.add(naming.nhi_hash_column(col.column))
        elif col.pii is not PiiClass.FREE_TEXT:  # free text never reaches core
            out.add(col.column)
    return out


def coarsened(spec: ExtractSpec) -> list[str]:
    """The generated columns app_reader sees instead of quasi identifiers (dob_year, ...)."""
    return [coarsened_column(c) for c in spec.columns if c.coarsening is not None]


@dataclass(frozen=True)
class CoreTable:
    """A core table as the access model sees it."""

    name: str
    columns: tuple[str, ...]  # in table order
    withheld: frozenset[str]
    has_organisation: bool  # per_org_id column: row-level security applies
    is_dimension: bool

    @property
    def readable(self) -> list[str]:
        """Columns app_reader may read, in table order."""
        return [c for c in self.columns if c not in self.withheld]


def core_tables(specs: dict[str, ExtractSpec], metadata: MetaData) -> list[CoreTable]:
    """Every core table of the metadata, with the columns app_reader may not read."""
    by_table = {s.core.table: s for s in specs.values()}
    out = []
    for table in metadata.tables.values():
        if table.schema != naming.CORE:
            continue
        spec = by_table.get(table.name)
        columns = tuple(c.name for c in table.columns)
        out.append(CoreTable(
            name=table.name,
            columns=columns,
            withheld=frozenset(withheld_columns(spec)) if spec else frozenset(),
            has_organisation="per_org_id" in columns,
            is_dimension=spec is None or spec.is_dimension,  # dim_date has no spec
        ))
    return sorted(out, key=lambda t: t.name)


def _ids(*names: str) -> sql.Composed:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def database_statements(roles: Roles, database: str) -> list[sql.Composed]:
    """Connecting: only the project's roles (PUBLIC loses its default CONNECT and TEMPORARY). Needs the
    database's owner (or a superuser): run as the migrating login, not as the owner role."""
    db = sql.Identifier(database)
    logins = _ids(roles.writer, roles.reader, roles.identified_reader, roles.engineer)
    return [
        sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db),
        sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(db, logins),
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(sql.Identifier(DEID),
                                                                            sql.Identifier(roles.owner)),
    ]


def privilege_statements(roles: Roles, tables: list[CoreTable]) -> list[sql.Composed]:
    """Schema, table and column privileges and default privileges (run as the owner role)."""
    owner, writer, reader = (sql.Identifier(r) for r in (roles.owner, roles.writer, roles.reader))
    identified, engineer = sql.Identifier(roles.identified_reader), sql.Identifier(roles.engineer)
    out: list[sql.Composed] = [
        # Functions are not executable by everyone by default in this project's schemas.
        sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC").format(owner),
        # identified_reader: all of core.
        sql.SQL("GRANT USAGE ON SCHEMA core TO {}").format(identified),
        sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA core TO {}").format(identified),
        sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA core GRANT SELECT ON TABLES TO {}").format(
            owner, identified),
        # app_reader: column grants only; a table added later is unreadable until its grants are made.
        sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA core REVOKE SELECT ON TABLES FROM {}").format(
            owner, reader),
        # Both readers: the de-identified views.
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}, {}").format(sql.Identifier(DEID), reader, identified),
        sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT SELECT ON TABLES TO {}, {}").format(
            owner, sql.Identifier(DEID), reader, identified),
    ]
    # engineer: raw, stg and etl (rejects included), read-only.
    for schema in (naming.RAW, naming.STG, naming.ETL):
        s = sql.Identifier(schema)
        out += [
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, engineer),
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(s, engineer),
            sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT SELECT ON TABLES TO {}").format(
                owner, s, engineer),
        ]
    for table in tables:
        t = sql.Identifier(naming.CORE, table.name)
        out += [
            sql.SQL("REVOKE ALL ON {} FROM {}").format(t, reader),
            sql.SQL("GRANT SELECT ({}) ON {} TO {}").format(_ids(*table.readable), t, reader),
        ]
        # The service: facts are soft-removed (is_removed), the calendar only grows.
        if table.name == "dim_date":
            out.append(sql.SQL("REVOKE UPDATE, DELETE, TRUNCATE ON {} FROM {}").format(t, writer))
        elif not table.is_dimension:
            out.append(sql.SQL("REVOKE DELETE, TRUNCATE ON {} FROM {}").format(t, writer))
    for name, privileges in WRITER_REVOKED.items():
        out.append(sql.SQL("REVOKE {} ON {} FROM {}").format(
            sql.SQL(", ").join(sql.SQL(p) for p in privileges), sql.Identifier(naming.ETL, name), writer))
    return out


def _lineage_check(table: str) -> sql.Composed:
    """A row written by the service carries the organisation and practice of the file its lineage
    names (a file name that does not say counts as agreeing). Written as uncorrelated IN-subqueries so
    Postgres hashes etl.load_run_files once per statement instead of looking it up once per row (a
    correlated EXISTS cost ~3 us a row: seconds on a million-row merge)."""
    t = sql.Identifier(table)
    parts = []
    for column in ("per_org_id", "practice_id"):
        c = sql.Identifier(column)
        parts.append(sql.SQL(
            "(({t}.load_file_id, {t}.{c}) IN "
            "(SELECT f.file_id, f.{c} FROM etl.load_run_files f WHERE f.{c} IS NOT NULL) "
            "OR {t}.load_file_id IN (SELECT f.file_id FROM etl.load_run_files f WHERE f.{c} IS NULL))"
        ).format(t=t, c=c))
    return sql.SQL(" AND ").join(parts)


def function_statements(roles: Roles) -> list[sql.Composed]:
    """core.reader_per_org_ids(): the organisations the session's login is bound to. SECURITY DEFINER
    (the owner's), so readers need no privilege on etl; search_path pinned against hijacking."""
    fn = sql.Identifier(*READER_ORGS_FUNCTION)
    return [
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {}() RETURNS SETOF bigint LANGUAGE sql STABLE SECURITY DEFINER "
            "SET search_path = pg_catalog, pg_temp AS "
            "$$ SELECT per_org_id FROM etl.login_organisations WHERE login = session_user::text $$"
        ).format(fn),
        sql.SQL("REVOKE ALL ON FUNCTION {}() FROM PUBLIC").format(fn),
        sql.SQL("GRANT EXECUTE ON FUNCTION {}() TO {}, {}").format(
            fn, sql.Identifier(roles.reader), sql.Identifier(roles.identified_reader)),
        sql.SQL("COMMENT ON FUNCTION {}() IS {}").format(
            fn, sql.Literal("Organisations (per_org_id) the session's login may see: etl.login_organisations")),
    ]


def policy_statements(roles: Roles, tables: list[CoreTable]) -> list[sql.Composed]:
    """Row-level security on every core table that has per_org_id (run as the owner role)."""
    readers = _ids(roles.reader, roles.identified_reader)
    writer = sql.Identifier(roles.writer)
    fn = sql.Identifier(*READER_ORGS_FUNCTION)
    out: list[sql.Composed] = []
    for table in tables:
        if not table.has_organisation:
            continue
        t = sql.Identifier(naming.CORE, table.name)
        check = _lineage_check(table.name)
        out.append(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(t))
        for name in (READER_POLICY, *WRITER_POLICIES):
            out.append(sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(sql.Identifier(name), t))
        out += [
            sql.SQL("CREATE POLICY {} ON {} FOR SELECT TO {} USING (per_org_id IN (SELECT {}()))").format(
                sql.Identifier(READER_POLICY), t, readers, fn),
            sql.SQL("CREATE POLICY writer_select ON {} FOR SELECT TO {} USING (true)").format(t, writer),
            sql.SQL("CREATE POLICY writer_insert ON {} FOR INSERT TO {} WITH CHECK ({})").format(t, writer, check),
            sql.SQL("CREATE POLICY writer_update ON {} FOR UPDATE TO {} USING (true) WITH CHECK ({})").format(
                t, writer, check),
        ]
        if table.is_dimension:
            out.append(sql.SQL("CREATE POLICY writer_delete ON {} FOR DELETE TO {} USING (true)").format(t, writer))
    return out


def view_statement(table: CoreTable, replace: bool = True) -> sql.Composed:
    """The de-identified view of one core table (security_invoker: the reader's grants and policies)."""
    return sql.SQL(
        "CREATE {}VIEW {} WITH (security_invoker = true) AS SELECT {} FROM {}"
    ).format(
        sql.SQL("OR REPLACE " if replace else ""),
        sql.Identifier(DEID, table.name), _ids(*table.readable), sql.Identifier(naming.CORE, table.name),
    )


def view_comment(table: CoreTable) -> sql.Composed:
    return sql.SQL("COMMENT ON VIEW {} IS {}").format(
        sql.Identifier(DEID, table.name),
        sql.Literal(f"core.{table.name} without direct identifiers, quasi identifiers coarsened "
                    "(generated from the contracts; rows of the reader's organisations)"))


def view_grant(roles: Roles, table: CoreTable) -> sql.Composed:
    return sql.SQL("GRANT SELECT ON {} TO {}, {}").format(
        sql.Identifier(DEID, table.name), sql.Identifier(roles.reader), sql.Identifier(roles.identified_reader))
