"""Roles and schemas: owner, etl_writer (DML, no DDL), app_reader (core only), with default privileges.

Hand-written (autogenerate does not manage roles, schemas or grants). Role names come from
worker.io.roles (DB_ROLE_PREFIX), quoted by the dialect, never pasted raw.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from typing import Sequence, Union

from alembic import context, op
from sqlalchemy import text

from contracts.naming import CORE, ETL, RAW, SCHEMAS, STG
from worker.io.roles import roles

revision: str = "0001"
down_revision: Union[str, None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

DATA_SCHEMAS = (RAW, STG, ETL, CORE)


def _q(name: str) -> str:
    return op.get_bind().dialect.identifier_preparer.quote(name)


def _create_role_if_missing(name: str) -> None:
    # CREATE ROLE has no IF NOT EXISTS; roles are cluster-wide and may exist from another database.
    # The name was checked to be [A-Za-z0-9_] by upgrade(), so it is safe as a string literal here.
    op.execute(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{name}') THEN "
        f"CREATE ROLE {_q(name)} NOLOGIN; END IF; END $$"
    )


def _roles():
    return roles(context.config.attributes.get("settings"))


def _give_alembic_version_to(role: str) -> None:
    """ALTER TABLE alembic_version OWNER TO role. A superuser may do that outright; a database owner
    with CREATEROLE (no superuser: MIGRATION_DATABASE_URL) only when the new owner may create in the
    table's schema (public), so that privilege is granted for the hand-over and taken back at once:
    the end state is the same either way."""
    bind = op.get_bind()
    schema = bind.execute(
        text("SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
             "WHERE c.oid = 'alembic_version'::regclass")
    ).scalar_one()
    lacks_create = not bind.execute(
        text("SELECT has_schema_privilege(:role, :schema, 'CREATE')"), {"role": role, "schema": schema}
    ).scalar_one()
    if lacks_create:
        op.execute(f"GRANT CREATE ON SCHEMA {_q(schema)} TO {_q(role)}")
    op.execute(f"ALTER TABLE alembic_version OWNER TO {_q(role)}")
    if lacks_create:
        op.execute(f"REVOKE CREATE ON SCHEMA {_q(schema)} FROM {_q(role)}")


def upgrade() -> None:
    r = _roles()
    for name in (r.owner, r.writer, r.reader):
        if not name.replace("_", "").isalnum():
            raise ValueError(f"role name {name!r} must be letters, digits and underscores")
        _create_role_if_missing(name)
    owner, writer, reader = _q(r.owner), _q(r.writer), _q(r.reader)
    # The migrating user must be able to act as the owner (a superuser already can).
    op.execute(f"GRANT {owner} TO current_user")
    for schema in DATA_SCHEMAS:
        op.execute(f"CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {owner}")
        op.execute(f"GRANT USAGE ON SCHEMA {schema} TO {writer}")
        # Tables created later by the owner get the same grants (default privileges).
        op.execute(
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema} "
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {writer}"
        )
        op.execute(
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema} "
            f"GRANT USAGE, SELECT ON SEQUENCES TO {writer}"
        )
    op.execute(f"GRANT USAGE ON SCHEMA {CORE} TO {reader}")
    op.execute(f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {CORE} GRANT SELECT ON TABLES TO {reader}")
    # alembic's own table must belong to the owner, since later migrations run as it.
    _give_alembic_version_to(r.owner)
    # From here on (this session, later revisions) objects are created as the owner.
    op.execute(f"SET ROLE {owner}")


def downgrade() -> None:
    r = _roles()
    op.execute("RESET ROLE")
    op.execute("ALTER TABLE alembic_version OWNER TO current_user")
    for schema in reversed(SCHEMAS):
        op.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    for name in (r.writer, r.reader, r.owner):
        # DROP OWNED needs the role's privileges: a superuser has them, a CREATEROLE owner takes them.
        op.execute(
            "DO $$ BEGIN IF NOT pg_has_role(current_user, "
            f"'{name}', 'USAGE') THEN GRANT {_q(name)} TO current_user; END IF; END $$"
        )
        # Privileges (incl. default privileges) this database holds for the role go first; the role
        # itself is dropped only if no other database still depends on it.
        op.execute(f"DROP OWNED BY {_q(name)}")
        op.execute(
            "DO $$ BEGIN "
            f"DROP ROLE IF EXISTS {_q(name)}; "
            "EXCEPTION WHEN dependent_objects_still_exist THEN "
            f"RAISE NOTICE 'role % is still used by another database; kept', '{name}'; END $$"
        )
