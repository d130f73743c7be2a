"""The database roles: who owns the schema, who writes data, who reads what.

Group roles (NOLOGIN, created by the migrations, names prefixed with DB_ROLE_PREFIX):

| role                | may                                                                          |
|---------------------|------------------------------------------------------------------------------|
| `indici_owner`      | own every schema and table; the migrations run as it (SET ROLE)              |
| `etl_writer`        | the service: DML on raw, stg, etl and core (no DDL, no TRUNCATE); cannot     |
|                     | delete audit history; writes core only through its row-level policies         |
| `app_reader`        | analysts: core without direct identifiers (column grants + the deid views),  |
|                     | rows of the organisations its login is bound to                              |
| `identified_reader` | clinical follow-up: all of core, rows of the organisations its login is bound to |
| `engineer`          | raw, stg, rejects and etl, read-only (where plain PII lives; no core)        |

People and services log in with login roles that are members of one group role
(`indici-ingest grant-login NAME --role ROLE`); the migrations log in as the database owner with
CREATEROLE (MIGRATION_DATABASE_URL), which becomes a member of `indici_owner`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from worker.settings import Settings, get_settings

ROLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

# The group roles a login may be given with grant-login (the owner is not: migrations use their own login).
LOGIN_ROLES = ("etl_writer", "app_reader", "identified_reader", "engineer")


@dataclass(frozen=True)
class Roles:
    owner: str
    """Owns every schema and table; the migrations run as this role. No login."""
    writer: str
    """DML on raw, stg, etl and core, no DDL: what the workers' login role is granted."""
    reader: str
    """De-identified core (column grants, the deid views), bound organisations only: analysts."""
    identified_reader: str
    """All of core, bound organisations only: clinical follow-up."""
    engineer: str
    """SELECT on raw, stg and etl (rejects included): data engineers tracing a file."""

    def all(self) -> tuple[str, ...]:
        """Every group role, the owner last (the others' grants reference it)."""
        return (self.writer, self.reader, self.identified_reader, self.engineer, self.owner)

    def readers(self) -> tuple[str, ...]:
        """Roles whose rows are limited to the organisations their login is bound to."""
        return (self.reader, self.identified_reader)

    def by_name(self, name: str) -> str:
        """The prefixed role for an unprefixed name of LOGIN_ROLES (e.g. 'etl_writer')."""
        mapping = {
            "etl_writer": self.writer,
            "app_reader": self.reader,
            "identified_reader": self.identified_reader,
            "engineer": self.engineer,
        }
        if name not in mapping:
            raise ValueError(f"unknown role {name!r}: one of {', '.join(LOGIN_ROLES)}")
        return mapping[name]


def roles(settings: Settings | None = None) -> Roles:
    prefix = (settings or get_settings()).db_role_prefix
    result = Roles(
        owner=f"{prefix}indici_owner",
        writer=f"{prefix}etl_writer",
        reader=f"{prefix}app_reader",
        identified_reader=f"{prefix}identified_reader",
        engineer=f"{prefix}engineer",
    )
    for name in result.all():
        if not ROLE_NAME.match(name):
            raise ValueError(f"role name {name!r} must be letters, digits and underscores (DB_ROLE_PREFIX)")
    return result
