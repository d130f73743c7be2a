"""Small helpers shared by the pipeline's integration tests."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

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
    """Empty every data table of the session database (tests share one migrated database); etl.config
    is kept (see reset_config)."""
    with psycopg.connect(url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
            "WHERE schemaname IN ('raw', 'stg', 'etl', 'core') AND tablename <> 'config'"
        ).fetchall()
        # TRUNCATE locks the tables one by one: a process reading two of them at that moment (a worker
        # just started by a fixture, a previous test's reader finishing) can form a deadlock with it,
        # which Postgres breaks by failing one side. Emptying is idempotent: try again.
        for attempt in range(5):
            try:
                conn.execute("TRUNCATE " + ", ".join(t[0] for t in tables) + " RESTART IDENTITY CASCADE")
                return
            except psycopg.errors.DeadlockDetected:
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))


class Receiver:
    """A tiny webhook: every POST body is kept (apprise json:// posts {title, message, type})."""

    def __init__(self, status: int = 200) -> None:
        received: list[dict] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append({"path": self.path, **json.loads(body)})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.server.server_address[1]}/hooks/indici"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def reset_config(url: str) -> None:
    """etl.config back to what migrate wrote: a test that sets operator values (config set) calls it
    before and after, so its values never change another test's thresholds, deliveries or tolerances."""
    from worker.pipeline.migrate import contract_defaults

    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM etl.config")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO etl.config (extract, key, value, source) VALUES (%s, %s, %s, 'contract')",
                            [(e, k, json.dumps(v)) for e, k, v in contract_defaults()])
