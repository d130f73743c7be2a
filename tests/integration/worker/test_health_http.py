"""GET /health over HTTP and `indici-ingest health`: 200 when healthy (ok or warning), 503 when not; worker
liveness by a Celery ping (a problem only when a broker is configured); 404 elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta

import pytest

from tests.conftest import REPO_ROOT
from tests.integration.worker.pipeline.helpers import put_file, reset_data, run
from worker.health_http import health_response, make_server
from worker.io.s3 import make_client
from worker.pipeline.nztime import NZ
from worker.synth import build_series

pytestmark = pytest.mark.integration


def _serve(settings):
    server = make_server(settings, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture()
def endpoint(migrated_db):
    reset_data(migrated_db.url)
    server, url = _serve(migrated_db.settings())
    try:
        yield url, migrated_db
    finally:
        server.shutdown()
        server.server_close()


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _fresh_batch(settings) -> None:
    """A Vaccine batch extracted yesterday (NZ), loaded: fresh, so healthy."""
    start = (datetime.now(NZ) - timedelta(days=1)).replace(tzinfo=None, second=0, microsecond=0)
    (batch,) = build_series(seed=51, patients=5, practices=[(685146, 535)], deltas=0, extracts=["Vaccine"],
                            start=start)
    put_file(make_client(settings), settings.s3_bucket, batch.files[0].name, batch.files[0].data)
    assert run(settings)["status"] == "succeeded"


def test_health_is_503_without_data_and_200_once_loaded(endpoint, pipeline_settings):
    url, _ = endpoint
    status, body = _get(url + "/health")
    assert status == 503 and body["status"] == "no_data"
    assert body["workers"]["broker_configured"] is False  # reported, not a problem
    _fresh_batch(pipeline_settings)
    status, body = _get(url + "/health?verbose=1")
    assert status == 200 and body["status"] == "warning", body["problems"]  # other extracts: not loaded yet
    assert body["extracts"]["Vaccine"]["state"] == "ok" and body["problems"] == []
    assert body["checked_at"][-6:] in ("+12:00", "+13:00")


def test_the_cli_prints_the_same_report(pipeline_settings):
    _fresh_batch(pipeline_settings)
    env = {**os.environ, "DATABASE_URL": pipeline_settings.database_url.get_secret_value()}
    env.pop("CELERY_BROKER_URL", None)
    done = subprocess.run([sys.executable, "-m", "worker.cli", "health"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["extracts"]["Vaccine"]["state"] == "ok" and report["status"] == "warning"


def test_a_configured_broker_needs_a_live_worker(pipeline_settings, redis_url):
    _fresh_batch(pipeline_settings)
    settings = pipeline_settings.model_copy(update={})
    configured = type(settings)(**{"DATABASE_URL": settings.database_url.get_secret_value(),
                                   "CELERY_BROKER_URL": redis_url, "CELERY_RESULT_BACKEND": redis_url})
    status, body = health_response(configured)
    assert status == 503 and body["workers"]["broker_reachable"] is True and body["workers"]["alive"] is False
    assert any("no Celery worker answered" in p for p in body["problems"])

    env = {**os.environ, "DATABASE_URL": settings.database_url.get_secret_value(), "CELERY_BROKER_URL": redis_url,
           "CELERY_RESULT_BACKEND": redis_url}
    name = f"health-{uuid.uuid4().hex[:8]}@%h"
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool=solo",
                               "-n", name, "--without-gossip", "--without-mingle", "--loglevel=WARNING"],
                              env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            status, body = health_response(configured)
            if body["workers"]["alive"] or time.monotonic() > deadline or worker.poll() is not None:
                break
            time.sleep(0.5)
        assert status == 200 and body["workers"]["alive"] is True
        assert any(w.startswith("health-") for w in body["workers"]["workers"])
    finally:
        worker.terminate()
        worker.wait(timeout=30)

    down = type(settings)(DATABASE_URL=settings.database_url.get_secret_value(),
                          CELERY_BROKER_URL="redis://127.0.0.1:1/0", CELERY_RESULT_BACKEND="redis://127.0.0.1:1/0")
    status, body = health_response(down)
    assert status == 503 and body["workers"]["broker_reachable"] is False
    assert any("CELERY_BROKER_URL" in p for p in body["problems"])


def test_other_paths_and_methods_are_404(endpoint):
    url, _ = endpoint
    assert _get(url + "/")[0] == 404
    assert _get(url + "/healthz")[0] == 404
    request = urllib.request.Request(url + "/health", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=10)
    assert raised.value.code == 404


def test_an_unreachable_database_is_503_without_details(migrated_db):
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
