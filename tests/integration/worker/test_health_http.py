"""GET /health over HTTP: 503 until every extract is healthy, 200 then; 404 elsewhere; broker reported."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import psycopg
import pytest

from tests.integration.worker.pipeline.helpers import reset_data
from worker.health_http import make_server

pytestmark = pytest.mark.integration


@pytest.fixture()
def endpoint(migrated_db):
    reset_data(migrated_db.url)
    server = make_server(migrated_db.settings(), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", migrated_db
    finally:
        server.shutdown()
        server.server_close()


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_health_is_503_without_data_and_200_when_every_extract_is_ok(endpoint):
    url, db = endpoint
    status, body = _get(url + "/health")
    assert status == 503 and body["status"] == "no_data"
    assert body["broker"] == {"reachable": True}
    with psycopg.connect(db.url, autocommit=True) as conn:
        conn.execute("INSERT INTO etl.health (extract, status) VALUES ('Vaccine', 'ok')")
    status, body = _get(url + "/health?verbose=1")
    assert status == 200 and body["status"] == "ok" and "Vaccine" in body["extracts"]


def test_other_paths_and_methods_are_404(endpoint):
    url, _ = endpoint
    assert _get(url + "/")[0] == 404
    assert _get(url + "/healthz")[0] == 404
    request = urllib.request.Request(url + "/health", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=10)
    assert raised.value.code == 404


def test_an_unreachable_database_is_503_without_details(migrated_db):
    from worker.health_http import health_response

    status, body = health_response(migrated_db.settings(DATABASE_URL="postgresql://127.0.0.1:1/nowhere"))
    assert status == 503 and body["status"] == "database_unreachable"
    assert "nowhere" not in json.dumps(body)


def test_it_listens_on_this_machine_only_by_default(migrated_db):
    from worker.cli import build_parser

    server = make_server(migrated_db.settings(), port=0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()
    assert build_parser().parse_args(["serve-health"]).host == "127.0.0.1"


def test_a_client_that_sends_nothing_is_disconnected(endpoint, monkeypatch):
    """Idle and slow clients do not hold a thread: the server closes the connection after its timeout."""
    import socket
    from urllib.parse import urlsplit

    from worker import health_http

    monkeypatch.setattr(health_http.HealthHandler, "timeout", 0.5)
    url, _ = endpoint
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as client:
        client.sendall(b"GET /health HTTP/1.1\r\n")  # a request that never ends
        assert client.recv(1024) == b""  # closed by the server, long before the client's own timeout
