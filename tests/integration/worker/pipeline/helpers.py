"""Small helpers shared by the pipeline's integration tests."""

from __future__ import annotations

from pathlib import Path

import psycopg

from worker.io.db import connect
from worker.io.s3 import make_client
from worker.pipeline.run import Selection, run_inline


def put_file(s3_client, bucket: str, key: str, body: bytes) -> str:
    """Upload bytes; returns the new version id."""
    return s3_client.put_object(Bucket=bucket, Key=key, Body=body)["VersionId"]


def put_fixture(s3_client, bucket: str, path: Path, key: str | None = None) -> str:
    return put_file(s3_client, bucket, key or path.name, path.read_bytes())


def run(settings, selection: Selection | None = None) -> dict:
    with connect(settings) as conn:
        return run_inline(conn, make_client(settings), settings, selection or Selection())


def query(settings, statement, params=None) -> list[tuple]:
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        return conn.execute(statement, params).fetchall()


def reset_data(url: str) -> None:
    """Empty every data table of the session database (tests share one migrated database)."""
    with psycopg.connect(url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
            "WHERE schemaname IN ('raw', 'stg', 'etl', 'core') AND tablename <> 'config'"
        ).fetchall()
        conn.execute("TRUNCATE " + ", ".join(t[0] for t in tables) + " RESTART IDENTITY CASCADE")
