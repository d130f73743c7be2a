"""Alembic environment: the target is the metadata generated from the contracts (contracts/schema.py)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from contracts.naming import SCHEMAS
from contracts.schema import metadata
from worker.io.db import make_engine
from worker.io.roles import roles

config = context.config
target_metadata = metadata()


def include_name(name, type_, parent_names) -> bool:
    """Compare only the project's four schemas; leave anything else in the database alone."""
    if type_ == "schema":
        return name in SCHEMAS
    return True


def _become_owner(connection) -> None:
    """Run as the owner role once this database has been set up by revision 0001 (its schemas exist),
    so tables belong to the owner and its default privileges apply. Before that, revision 0001 runs as
    the connecting user: it creates the roles (cluster-wide, maybe already there from another database)
    and the schemas, and hands alembic's own table to the owner."""
    owner = roles(config.attributes.get("settings")).owner
    can = connection.execute(
        text(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner "
            "WHERE n.nspname = 'etl' AND r.rolname = :r) "
            "AND coalesce((SELECT pg_has_role(current_user, oid, 'MEMBER') FROM pg_roles WHERE rolname = :r), false)"
        ),
        {"r": owner},
    ).scalar()
    if can:
        connection.execute(text("SELECT set_config('role', :r, false)"), {"r": owner})


def run_migrations_online() -> None:
    # MIGRATION_DATABASE_URL: the database owner with CREATEROLE (DATABASE_URL when unset).
    engine = make_engine(config.attributes.get("settings"), migration=True)
    with engine.connect() as connection:
        _become_owner(connection)
        connection.commit()
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            include_schemas=True,
            include_name=include_name,
            transaction_per_migration=True,
            compare_type=True,
            compare_server_default=False,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline mode is not supported: migrations need the database")
run_migrations_online()
