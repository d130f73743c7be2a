"""Per-extract settings kept in etl.config (defaults from the contracts; operators may override)."""

from __future__ import annotations

from typing import Any

import psycopg


def get_value(conn: psycopg.Connection, extract: str, key: str, default: Any = None) -> Any:
    """The extract's own value, else the '*' value, else the default."""
    row = conn.execute(
        "SELECT value FROM etl.config WHERE key = %s AND extract IN (%s, '*') "
        "ORDER BY extract = '*' LIMIT 1",
        (key, extract),
    ).fetchone()
    return default if row is None else row[0]


def set_value(conn: psycopg.Connection, extract: str, key: str, value: Any) -> None:
    """Set a value as an operator (it will not be overwritten by contract defaults)."""
    from psycopg.types.json import Jsonb

    conn.execute(
        "INSERT INTO etl.config (extract, key, value, source) VALUES (%s, %s, %s, 'operator') "
        "ON CONFLICT (extract, key) DO UPDATE SET value = EXCLUDED.value, source = 'operator', updated_at = now()",
        (extract, key, Jsonb(value)),
    )
