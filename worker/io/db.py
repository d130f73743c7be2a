"""Database connections: psycopg 3 for the pipeline, SQLAlchemy engines for alembic."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import psycopg
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from worker.settings import Settings, get_settings


def libpq_url(settings: Settings | None = None) -> str:
    """DATABASE_URL in libpq form (accepts the SQLAlchemy `postgresql+psycopg://` spelling too)."""
    url = (settings or get_settings()).database_url.get_secret_value()
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


def sqlalchemy_url(settings: Settings | None = None) -> str:
    return "postgresql+psycopg://" + libpq_url(settings)[len("postgresql://") :]


def make_engine(settings: Settings | None = None) -> Engine:
    return create_engine(sqlalchemy_url(settings), future=True)


@contextmanager
def connect(settings: Settings | None = None, *, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    """A psycopg connection with UTC session time zone (timestamps are converted explicitly)."""
    with psycopg.connect(libpq_url(settings), autocommit=autocommit, application_name="indici-ingest") as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        if not autocommit:
            conn.commit()
        yield conn
