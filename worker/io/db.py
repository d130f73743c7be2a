"""Database connections: psycopg 3 for the pipeline, SQLAlchemy engines for alembic.

Two logins: the service's (DATABASE_URL, the etl_writer login in production) and the migrations' owner
(MIGRATION_DATABASE_URL, defaulting to DATABASE_URL), chosen with `migration=True`. A connection error is
re-raised with any secret masked (libpq may quote part of the connection string).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import psycopg
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from worker.redact import redact
from worker.settings import Settings, get_settings


def libpq_url(settings: Settings | None = None, *, migration: bool = False) -> str:
    """DATABASE_URL (or the migration URL) in libpq form (accepts the SQLAlchemy spelling too)."""
    settings = settings or get_settings()
    url = (settings.migration_url() if migration else settings.database_url).get_secret_value()
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


def sqlalchemy_url(settings: Settings | None = None, *, migration: bool = False) -> str:
    return "postgresql+psycopg://" + libpq_url(settings, migration=migration)[len("postgresql://") :]


def make_engine(settings: Settings | None = None, *, migration: bool = False) -> Engine:
    return create_engine(sqlalchemy_url(settings, migration=migration), future=True)


def open_connection(settings: Settings | None = None, *, autocommit: bool = False,
                    migration: bool = False) -> psycopg.Connection:
    """psycopg.connect with the error message's secrets masked."""
    try:
        return psycopg.connect(libpq_url(settings, migration=migration), autocommit=autocommit,
                               application_name="indici-ingest")
    except psycopg.Error as exc:
        raise type(exc)(redact(str(exc))) from None


@contextmanager
def connect(settings: Settings | None = None, *, autocommit: bool = False,
            migration: bool = False) -> Iterator[psycopg.Connection]:
    """A psycopg connection with UTC session time zone (timestamps are converted explicitly)."""
    with open_connection(settings, autocommit=autocommit, migration=migration) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        if not autocommit:
            conn.commit()
        yield conn
