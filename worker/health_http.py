"""`GET /health` over HTTP: the health report (worker/pipeline/health.py) plus worker liveness.

200 when the status is "ok" or "warning" (something deserves a look, nothing is broken), 503 otherwise
(a monitor only needs the code; the JSON's "problems" and "warnings" say why). Any other path or
method: 404. `indici-ingest health` prints the same JSON (exit 0 for 200, 1 for 503).

One endpoint does not justify a web framework: the standard library's ThreadingHTTPServer, one
database connection per request (nothing is shared between threads, and a database restart is seen
by the next request instead of poisoning a pooled connection).
"""

from __future__ import annotations

import json
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import psycopg

from worker.io.db import connect
from worker.liveness import liveness_problem, worker_liveness
from worker.log import get_logger
from worker.pipeline.health import health_report
from worker.settings import Settings

log = get_logger(__name__)


HEALTHY = ("ok", "warning")  # 200; every other status is 503


def health_response(settings: Settings, now: datetime | None = None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) of one health check: the report from the database plus worker liveness."""
    try:
        with connect(settings, autocommit=True) as conn:
            conn.execute(f"SET statement_timeout = {DATABASE_TIMEOUT_MS}")
            report = health_report(conn, now)
    except psycopg.errors.UndefinedTable:
        report = {"status": "database_not_migrated", "problems": ["the schema is missing: run `indici-ingest migrate`"],
                  "warnings": []}
    except psycopg.Error as exc:  # the class only: a message may name hosts or users
        report = {"status": "database_unreachable", "error": type(exc).__name__,
                  "problems": [f"Postgres (DATABASE_URL) cannot be reached: {type(exc).__name__}"], "warnings": []}
    liveness = worker_liveness(settings)
    report["workers"] = liveness
    problem = liveness_problem(liveness)
    if problem is not None:
        report["problems"].append(problem)
        if report["status"] in HEALTHY:
            report["status"] = "failing"
    return (HTTPStatus.OK if report["status"] in HEALTHY else HTTPStatus.SERVICE_UNAVAILABLE), report


# Seconds a client may take to send its request, or stay connected idle (keep-alive) before it is
# dropped, and that the database may take to answer: a slow or stuck client or database never holds a
# thread for long.
REQUEST_TIMEOUT = 10
DATABASE_TIMEOUT_MS = 5000


class HealthHandler(BaseHTTPRequestHandler):
    server_version = "indici-ingest-health"
    settings: Settings  # set by make_server on a subclass
    timeout = REQUEST_TIMEOUT  # socket timeout of each connection (StreamRequestHandler)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, default=str).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if urlsplit(self.path).path != "/health":
            self._send(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        status, body = health_response(self.settings)
        self._send(status, body)

    def _not_found(self) -> None:
        self._send(HTTPStatus.NOT_FOUND, {"error": "not found"})

    do_HEAD = do_GET
    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_found

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        # JSON lines like the rest of the service (the default writes Apache-style text to stderr).
        log.info("http request", method=self.command, path=urlsplit(self.path or "").path,
                 status=args[1] if len(args) > 1 else None)


def make_server(settings: Settings, host: str = "127.0.0.1", port: int = 8080) -> ThreadingHTTPServer:
    handler = type("BoundHealthHandler", (HealthHandler,), {"settings": settings})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True  # a hung request never blocks shutdown
    return server


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8080) -> None:
    server = make_server(settings, host, port)
    log.info("health endpoint listening", host=host, port=server.server_address[1], path="/health")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
