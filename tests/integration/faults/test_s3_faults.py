"""S3 faults through a small local TCP proxy in front of the moto server: connections reset in the
middle of an object's body, and 503 SlowDown answers. The run must recover by retry (botocore's for
503, the driver's for a cut stream), not by an operator, and end equal to a clean run."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

import pytest

from tests.integration.faults.test_faults import _compared, _report
from tests.integration.worker.pipeline.helpers import put_file, query, reset_data
from tests.integration.worker.test_drivers_equal import snapshot
from worker.io.db import connect
from worker.io.s3 import make_client
from worker.pipeline.run import Selection, run_inline
from worker.synth import build_series

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SLOW_DOWN = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
             b"<Message>Please reduce your request rate.</Message></Error>")


class FaultyProxy:
    """One request per connection (it asks the server to close after each answer). Object GETs (a
    versionId in the query) get, in turn: a 503 SlowDown, a reset after `cut` bytes of the answer,
    then the real answer; every other request passes through."""

    def __init__(self, upstream: str, cut: int = 3000) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.cut = cut
        self.faults: Counter[str] = Counter()
        self.seen: Counter[str] = Counter()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                data = client.recv(65536)
                if not data:
                    return
                head += data
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            lines = [line for line in head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
                     if not line.lower().startswith(b"connection:")]
            rest = head.split(b"\r\n\r\n", 1)[1]
            request = b"\r\n".join(lines) + b"\r\nConnection: close\r\n\r\n" + rest
            is_object_get = request_line.startswith("GET ") and "versionId=" in request_line
            turn = None
            if is_object_get:
                path = request_line.split(" ")[1].split("?")[0]
                self.seen[path] += 1
                turn = self.seen[path]
            if turn == 1:
                self.faults["503"] += 1
                client.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: "
                               + str(len(SLOW_DOWN)).encode() + b"\r\nConnection: close\r\n\r\n" + SLOW_DOWN)
                return
            with socket.create_connection(self.upstream) as upstream:
                upstream.sendall(request)
                sent = 0
                while True:
                    data = upstream.recv(65536)
                    if not data:
                        return
                    if turn == 2 and sent + len(data) > self.cut:
                        client.sendall(data[: max(self.cut - sent, 0)])
                        self.faults["reset"] += 1
                        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
                        return
                    client.sendall(data)
                    sent += len(data)


def test_s3_resets_mid_stream_and_slow_down_are_retried(pipeline_settings, s3_server):
    (batch,) = build_series(seed=41, patients=200, practices=[(685146, 535)], deltas=0,
                            extracts=["Patients", "Providers", "Appointments", "Vaccine"])
    s3 = make_client(pipeline_settings)
    for f in batch.files:
        put_file(s3, pipeline_settings.s3_bucket, f.name, f.data)
    url = pipeline_settings.database_url.get_secret_value()
    with connect(pipeline_settings) as conn:
        assert run_inline(conn, s3, pipeline_settings, Selection())["status"] == "succeeded"
    # `attempts` counts the tries a file took: a retried landing says 2 (and that is the point).
    clean = _compared(snapshot(url, exclude=frozenset({"attempts"})))
    reset_data(url)

    proxy = FaultyProxy(s3_server.endpoint_url)
    faulty = pipeline_settings.model_copy(update={"s3_endpoint_url": proxy.url})
    started = time.monotonic()
    with connect(faulty) as conn:
        summary = run_inline(conn, make_client(faulty), faulty, Selection())
    seconds = time.monotonic() - started
    assert proxy.faults["503"] == len(batch.files) and proxy.faults["reset"] >= 1, proxy.faults
    assert summary["status"] == "succeeded", summary
    assert _compared(snapshot(url, exclude=frozenset({"attempts"}))) == clean
    retried = query(pipeline_settings, "SELECT count(*) FROM etl.load_run_files WHERE attempts > 1")[0][0]
    assert retried == proxy.faults["reset"]  # each cut stream cost its file one recorded attempt
    _report("S3 503 SlowDown and resets mid-stream", "automatically (retries)", seconds)
