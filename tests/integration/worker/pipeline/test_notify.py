"""Run notifications: the message from the etl tables alone, and end to end through apprise's json://
to a webhook receiver in the test, after a real run through the command line."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from pydantic import SecretStr

from tests.integration.worker.pipeline.helpers import Receiver, put_file, query, run
from worker.io.db import connect
from worker.io.s3 import make_client
from worker.pipeline.notify import (
    RunMessage,
    build_run_message,
    notify_run,
    safe_error,
    send,
)
from worker.synth import build_series

pytestmark = pytest.mark.integration

PRACTICE = [(685146, 535)]
NHI = re.compile(r"\b[A-Z]{3}(?:\d{4}|\d{2}[A-Z]{2})\b")


def _batch_with_a_broken_file(settings):
    (batch,) = build_series(seed=31, patients=8, practices=PRACTICE, deltas=0,
                            extracts=["Patients", "Appointments", "Vaccine"],
                            faults={"wrong_field_count": 1, "missing_required": 2})
    s3 = make_client(settings)
    for f in batch.files:
        put_file(s3, settings.s3_bucket, f.name, f.data)
    return batch


def test_the_message_summarises_each_extract_from_the_etl_tables(pipeline_settings):
    batch = _batch_with_a_broken_file(pipeline_settings)
    (broken,) = [f for f in batch.files if f.fatal_fault]
    summary = run(pipeline_settings)
    assert summary["status"] == "partial"
    with connect(pipeline_settings) as conn:
        message = build_run_message(conn, summary["load_run_id"])
    run_id = summary["load_run_id"]
    assert message.status == "partial" and message.notify_type == "warning"
    assert message.title == f"indici-ingest run {run_id} partial (1 of 3 files failed)"
    body = message.body
    assert f"Run {run_id} (nightly) partial: 3 files, 1 failed" in body
    for f in batch.files:
        rows = query(pipeline_settings, "SELECT rows_read, rows_staged, rows_rejected, status FROM etl.load_run_files "
                     "WHERE s3_key = %s", (f.name,))[0]
        line = next(x for x in body.splitlines() if x.startswith(f"{f.extract}: "))
        if rows[3] == "failed":
            assert "1 failed" in line
        else:
            assert f"rows read {rows[0]}, ingested {rows[1]}, rejected {rows[2]}" in line
    (failed_line,) = [x for x in body.splitlines() if x.strip().startswith("Failed: file ")]
    assert broken.name in failed_line and "field" in failed_line, failed_line
    assert "DateExtracted: 2025-08-19 08:50:00+12:00" in body
    assert f"indici-ingest rejects --run {run_id}" in body and f"WHERE load_run_id = {run_id}" in body
    values = {v for f in batch.files for row in f.rows for v in row if len(v) >= 4 and not v.isdigit()}
    leaked = [v for v in values if re.search(rf"(?<!\w){re.escape(v)}(?!\w)", body)
              and v not in {"Patients", "Appointments", "Vaccine"}]
    assert leaked == [] and not NHI.search(body)


def test_error_texts_lose_quoted_values_and_extra_lines():
    assert safe_error('invalid input syntax for type bigint: "ZZZ0016"\nDETAIL: Key (x)=(1)') == \
        'invalid input syntax for type bigint: "…"'
    assert len(safe_error("x" * 1000)) == 300


def test_sending_never_raises_and_reports_why():
    message = RunMessage(1, "succeeded", "t", "b", "success")
    assert send(message, ["nosuch://x"]) == (False, "NOTIFY_URLS entry 1 is not a URL apprise supports")
    delivered, error = send(message, ["json://127.0.0.1:1/closed"])
    assert delivered is False and error


def test_a_real_run_notifies_the_webhook_once(pipeline_settings):
    batch = _batch_with_a_broken_file(pipeline_settings)
    (broken,) = [f for f in batch.files if f.fatal_fault]
    with Receiver() as hook:
        env = {**os.environ, "DATABASE_URL": pipeline_settings.database_url.get_secret_value(),
               "DB_ROLE_PREFIX": pipeline_settings.db_role_prefix, "S3_BUCKET": pipeline_settings.s3_bucket,
               "S3_ENDPOINT_URL": pipeline_settings.s3_endpoint_url, "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "NHI_HMAC_KEY": "test-nhi-hmac-key-of-at-least-32-bytes",
               "NOTIFY_URLS": hook.url}
        done = subprocess.run([sys.executable, "-m", "worker.cli", "run", "--inline"], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 1, done.stderr[-2000:]  # partial
        assert len(hook.received) == 1
        (sent,) = hook.received
        run_id = query(pipeline_settings, "SELECT max(load_run_id) FROM etl.load_runs")[0][0]
        assert sent["path"] == "/hooks/indici" and sent["type"] == "warning"
        assert sent["title"].startswith(f"indici-ingest run {run_id} partial")
        assert broken.name in sent["message"] and "Appointments:" in sent["message"]
        assert not NHI.search(sent["message"])
        assert query(pipeline_settings, "SELECT run_status, targets, delivered, error FROM etl.notifications") == [
            ("partial", 1, True, None)]
        assert hook.url not in done.stderr  # the URL is never logged
        # A second finalisation of the same run (a redelivered task) does not notify again.
        with connect(pipeline_settings) as conn:
            assert notify_run(conn, run_id, pipeline_settings.model_copy(
                update={"notify_urls": SecretStr(hook.url)})) is None
        assert len(hook.received) == 1


def test_a_failing_webhook_never_fails_the_run(pipeline_settings, monkeypatch):
    from worker.settings import get_settings

    (batch,) = build_series(seed=32, patients=5, practices=PRACTICE, deltas=0, extracts=["Vaccine"])
    put_file(make_client(pipeline_settings), pipeline_settings.s3_bucket, batch.files[0].name, batch.files[0].data)
    with Receiver(status=500) as hook:
        # The run's finalisation reads NOTIFY_URLS from the process's settings, like a worker does.
        monkeypatch.setenv("NOTIFY_URLS", hook.url)
        get_settings.cache_clear()
        try:
            summary = run(pipeline_settings)
        finally:
            monkeypatch.delenv("NOTIFY_URLS")
            get_settings.cache_clear()
        assert summary["status"] == "succeeded"
        assert len(hook.received) >= 1  # it was tried
    (delivered, error), = query(pipeline_settings, "SELECT delivered, error FROM etl.notifications")
    assert delivered is False and "did not accept" in error
