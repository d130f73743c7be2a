"""Logs of the Celery processes, as started from the README (no --loglevel): every line is JSON, the
worker logs at INFO by default (so a successful night is visible), a file's lines carry load_run_id and
s3_key, and Celery's, beat's and Flower's own lines go through the same formatter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from celery import Celery

from tests.conftest import REPO_ROOT
from tests.integration.worker.pipeline.helpers import put_file, reset_data
from worker.io.s3 import make_client
from worker.net import free_port
from worker.settings import Settings
from worker.synth import build_series

pytestmark = pytest.mark.integration


def _json_lines(path: Path) -> list[dict]:
    """Every non-empty line as JSON; a line that is not JSON fails the test with the line."""
    records = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pytest.fail(f"{path.name}:{n} is not JSON: {line[:300]}")
    return records


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture()
def env(migrated_db, s3_server, redis_url) -> dict[str, str]:
    reset_data(migrated_db.url)
    bucket = f"indici-logs-{uuid.uuid4().hex[:10]}"
    s3 = s3_server.client()
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "ap-southeast-2"})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "NOTIFY_", "LOG_LEVEL"))}
    return {**base, "DATABASE_URL": migrated_db.url, "DB_ROLE_PREFIX": migrated_db.role_prefix, "S3_BUCKET": bucket,
            "S3_ENDPOINT_URL": s3_server.endpoint_url, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "ap-southeast-2",
            "NHI_HMAC_KEY": "test-nhi-hmac-key-of-at-least-32-bytes", "CELERY_BROKER_URL": redis_url,
            "CELERY_RESULT_BACKEND": redis_url}


def test_a_worker_logs_json_at_info_with_the_run_and_key_on_a_file_s_lines(env, tmp_path):
    settings = Settings(**{k: env[k] for k in ("DATABASE_URL", "S3_BUCKET", "S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                               "AWS_SECRET_ACCESS_KEY")})
    (batch,) = build_series(seed=3, patients=6, practices=[(685146, 535)], deltas=0, extracts=["Patients", "Vaccine"])
    for f in batch.files:
        put_file(make_client(settings), settings.s3_bucket, f.name, f.data)
    log = tmp_path / "worker.log"
    node = f"logs-{uuid.uuid4().hex[:8]}@%h"
    client = Celery(broker=env["CELERY_BROKER_URL"], backend=env["CELERY_RESULT_BACKEND"])
    with open(log, "wb") as out:  # exactly the README's command: no --loglevel
        worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool=solo",
                                   "-n", node, "--without-gossip", "--without-mingle"],
                                  env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not client.control.ping(timeout=0.5):
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        done = subprocess.run([sys.executable, "-m", "worker.cli", "--log-level", "ERROR", "run", "--wait"], env=env,
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    finally:
        _stop(worker)
        client.close()
    records = _json_lines(log)
    events = {r.get("event") for r in records}
    assert "worker starting" in events  # the banner, as JSON
    assert any(r.get("logger", "").startswith("celery") and r.get("level") == "info" for r in records)  # Celery's own
    run_id = json.loads(done.stdout[done.stdout.index("\n{") + 1:] if not done.stdout.startswith("{")
                        else done.stdout)["load_run_id"]
    for event in ("file landed", "file staged"):
        lines = [r for r in records if r.get("event") == event]
        assert {r["s3_key"] for r in lines} == {f.name for f in batch.files}, event
        assert {r["load_run_id"] for r in lines} == {run_id}, event
    assert any(r.get("event") == "run merged" and r.get("load_run_id") == run_id for r in records)


def test_beat_and_flower_log_json(env, tmp_path):
    beat_log, flower_log = tmp_path / "beat.log", tmp_path / "flower.log"
    port = free_port()
    with open(beat_log, "wb") as out:
        beat = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker.app", "--quiet", "beat",
                                 "-s", str(tmp_path / "beat-schedule")],
                                env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    with open(flower_log, "wb") as out:
        flower = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker.app", "flower",
                                   "--conf=ops/flowerconfig.py", f"--port={port}"],
                                  env={**env, "FLOWER_BASIC_AUTH": "ops:" + uuid.uuid4().hex},
                                  cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 40
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            except urllib.error.HTTPError as exc:
                assert exc.code == 401  # basic auth required
                break
            except OSError:
                assert flower.poll() is None and time.monotonic() < deadline, flower_log.read_text()[-3000:]
                time.sleep(0.5)
        while "beat starting" not in beat_log.read_text() and time.monotonic() < deadline:
            assert beat.poll() is None, beat_log.read_text()[-3000:]
            time.sleep(0.5)
    finally:
        _stop(beat)
        _stop(flower)
    beat_records = _json_lines(beat_log)
    from scheduler import BEAT_SCHEDULE

    assert any(r.get("event") == "beat starting" and r.get("schedule") == sorted(BEAT_SCHEDULE) for r in beat_records)
    assert {"nightly-run", "reconcile"} <= set(BEAT_SCHEDULE)
    assert any(r.get("logger", "").startswith("celery.beat") for r in beat_records)  # beat's own, as JSON
    flower_records = _json_lines(flower_log)
    assert any("Visit me at" in str(r.get("event")) for r in flower_records)  # Flower's own banner line
    assert any(str(r.get("event")).startswith("Broker:") for r in flower_records)
