"""The database roles: who owns the schema, who writes data, who reads curated data."""

from __future__ import annotations

from dataclasses import dataclass

from worker.settings import Settings, get_settings


@dataclass(frozen=True)
class Roles:
    owner: str
    """Owns every schema and table; the migrations run as this role. No login."""
    writer: str
    """DML on raw, stg, etl and core, no DDL: what the workers' login role is granted."""
    reader: str
    """SELECT on core only: what dashboards and analysts' login roles are granted."""


def roles(settings: Settings | None = None) -> Roles:
    prefix = (settings or get_settings()).db_role_prefix
    return Roles(owner=f"{prefix}indici_owner", writer=f"{prefix}etl_writer", reader=f"{prefix}app_reader")
