"""Faults with real processes: each run ends equal to a clean run of the same files (raw, stg, core and
the ledger, ids and timestamps aside), and the time it took to recover is printed (`-s` shows it).

- a worker SIGKILLed (its whole process group, main process included) during the COPY of a big file:
  its message stays unacknowledged in Redis until the visibility timeout; the reconciler re-enqueues
  the file when its lease expires, then merges and closes the run.
- a worker SIGKILLed just after a file's landing committed (before the task's ack).
- the Postgres backend of a merge terminated (pg_terminate_backend): the merge task retries.
- two runs of the same selection enqueued at once: one run, both callers see its outcome.
- the broker (and result backend) killed and restarted empty mid-chord: every message lost (the worker
  is supervised: started again if it exits, as docker-compose.yml restarts it).
- two beat processes sending the nightly task: one run for the night.
(S3 faults through a local proxy: test_s3_faults.py.)

Short limits keep them fast: TASK_TIME_LIMIT=20 (a file's lease is 50 s), RUN_LEASE_SECONDS=3; the
test plays beat, sending `indici.reconcile` every 2 s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from celery import Celery

from tests.conftest import REPO_ROOT
from tests.integration.worker.pipeline.helpers import put_file, reset_data
from tests.integration.worker.test_drivers_equal import snapshot
from worker.io.db import connect
from worker.io.s3 import make_client
from worker.net import free_port
from worker.pipeline.run import Selection, run_inline
from worker.settings import Settings
from worker.synth import build_series

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COMPARED = ("raw.", "stg.", "core.", "etl.load_run_files", "etl.rejects_")


@dataclass
class Faults:
    settings: Settings
    env: dict[str, str]
    client: Celery
    tmp: Path
    url: str

    def spawn_worker(self, name: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool=prefork", "--concurrency=2",
             "--loglevel=INFO", "-n", f"{name}-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle"],
            env=self.env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start_worker(self, name: str) -> subprocess.Popen:
        worker = self.spawn_worker(name)
        deadline = time.monotonic() + 40
        while not self.client.control.ping(timeout=0.5, destination=None):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {name} did not start")
        return worker

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "worker.cli", "--log-level", "ERROR", *args], env=self.env,
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


class SupervisedWorker:
    """A worker started again whenever it exits, as docker-compose.yml's `restart: unless-stopped` does
    for the service's workers. Celery's worker can exit on a broker that vanishes under it (kombu 5.7's
    Redis transport restoring unacknowledged messages through a connection already closed:
    "Unrecoverable error: AttributeError(... 'hostname')"); in production its supervisor starts it again,
    and so does this. `restarts` counts how often that happened."""

    def __init__(self, faults: Faults, name: str) -> None:
        self._spawn = lambda: faults.spawn_worker(name)
        self.process = faults.start_worker(name)
        self.restarts = 0
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name=f"supervise-{name}", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stopping.wait(0.5):
            if self.process.poll() is not None:
                self.restarts += 1
                self.process = self._spawn()

    def stop(self) -> None:
        self._stopping.set()
        self._watcher.join()
        _stop(self.process)


def _stop(worker: subprocess.Popen, kill: bool = False) -> None:
    if worker.poll() is not None:
        return
    os.killpg(worker.pid, signal.SIGKILL if kill else signal.SIGTERM)
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)


@pytest.fixture(scope="module")
def faults(migrated_db, s3_server, redis_url, tmp_path_factory) -> Iterator[Faults]:
    bucket = f"indici-faults-{uuid.uuid4().hex[:12]}"
    s3 = s3_server.client()
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "ap-southeast-2"})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    values = {
        "DATABASE_URL": migrated_db.url, "DB_ROLE_PREFIX": migrated_db.role_prefix, "S3_BUCKET": bucket,
        "S3_ENDPOINT_URL": s3_server.endpoint_url, "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "NHI_HMAC_KEY": "test-nhi-hmac-key-of-at-least-32-bytes",
        "CELERY_BROKER_URL": redis_url, "CELERY_RESULT_BACKEND": redis_url,
        "TASK_TIME_LIMIT": "20", "TASK_SOFT_TIME_LIMIT": "15", "RUN_LEASE_SECONDS": "3", "LOCK_TIMEOUT_SECONDS": "30",
    }
    env = {**os.environ, "AWS_DEFAULT_REGION": "ap-southeast-2", **values}
    settings = Settings(**values)
    from worker.app import make_app

    client = make_app(settings)
    try:
        yield Faults(settings, env, client, tmp_path_factory.mktemp("faults"), migrated_db.url)
    finally:
        client.close()


def _upload(faults: Faults, patients: int) -> None:
    s3 = make_client(faults.settings)
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=faults.settings.s3_bucket):
        objects = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in page.get("Versions", [])]
        if objects:
            s3.delete_objects(Bucket=faults.settings.s3_bucket, Delete={"Objects": objects})
    (batch,) = build_series(seed=31, patients=patients, practices=[(685146, 535)], deltas=0,
                            extracts=["Patients", "Providers", "Appointments", "Vaccine"])
    for f in batch.files:
        put_file(s3, faults.settings.s3_bucket, f.name, f.data)


def _compared(tables: dict[str, list[str]]) -> dict[str, list[str]]:
    return {t: rows for t, rows in tables.items() if t.startswith(COMPARED)}


def _clean(faults: Faults) -> dict[str, list[str]]:
    reset_data(faults.url)
    with connect(faults.settings) as conn:
        summary = run_inline(conn, make_client(faults.settings), faults.settings, Selection())
    assert summary["status"] == "succeeded", summary
    tables = _compared(snapshot(faults.url))
    reset_data(faults.url)
    return tables


def _query(faults: Faults, statement: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(faults.url, autocommit=True) as conn:
        return conn.execute(statement, params).fetchall()


def _until(condition: Callable[[], bool], timeout: float, poll: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return False


def _closed(faults: Faults, run_id: int, timeout: float, reconcile: bool = True) -> tuple[str, float]:
    """Wait for the run to close, playing beat's reconciler; (status, seconds waited)."""
    started = time.monotonic()
    last = 0.0
    while time.monotonic() - started < timeout:
        ((status,),) = _query(faults, "SELECT status FROM etl.load_runs WHERE load_run_id = %s", (run_id,))
        if status != "running":
            return status, time.monotonic() - started
        if reconcile and time.monotonic() - last > 2:
            faults.client.send_task("indici.reconcile")
            last = time.monotonic()
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} still running after {timeout}s")


def _enqueue(faults: Faults) -> int:
    queued = faults.cli("run")
    assert queued.returncode == 0, queued.stderr
    return int(json.loads(queued.stdout)["load_run_id"])


def _report(name: str, recovery: str, seconds: float) -> None:
    print(f"\nFAULT {name}: recovered {recovery} in {seconds:.1f}s", flush=True)


def _rescued(faults, run_id: int, killed_at: float, clean) -> float:
    """A fresh worker takes over after a kill: the run must end succeeded and equal to the clean run.
    Returns the seconds from the kill to the run's close."""
    rescuer = faults.start_worker("rescuer")
    try:
        status, _ = _closed(faults, run_id, timeout=240)
        seconds = time.monotonic() - killed_at
    finally:
        _stop(rescuer)
    assert status == "succeeded"
    assert _compared(snapshot(faults.url)) == clean
    return seconds


def test_worker_killed_during_copy_of_a_big_file(faults):
    _upload(faults, patients=1500)
    clean = _clean(faults)
    worker = faults.start_worker("copy-victim")
    try:
        run_id = _enqueue(faults)
        in_copy = _until(lambda: bool(_query(
            faults, "SELECT 1 FROM pg_stat_activity WHERE application_name LIKE %s AND state = 'active' "
                    "AND query ILIKE 'COPY%%'", (f"indici-ingest run {run_id} land file %",))), timeout=60)
        assert in_copy, "no COPY was seen"
        _stop(worker, kill=True)
        killed_at = time.monotonic()
    finally:
        _stop(worker, kill=True)
    seconds = _rescued(faults, run_id, killed_at, clean)
    _report("worker SIGKILLed during COPY", "automatically (reconciler, file lease expiry)", seconds)


def test_worker_killed_just_after_a_landing_committed(faults):
    _upload(faults, patients=300)
    clean = _clean(faults)
    worker = faults.start_worker("ack-victim")
    try:
        run_id = _enqueue(faults)
        landed = _until(lambda: bool(_query(
            faults, "SELECT 1 FROM etl.load_run_files WHERE load_run_id = %s AND status IN ('landed', 'staged')",
            (run_id,))),
            timeout=60, poll=0.002)
        assert landed, "no file landed"
        _stop(worker, kill=True)
        killed_at = time.monotonic()
    finally:
        _stop(worker, kill=True)
    seconds = _rescued(faults, run_id, killed_at, clean)
    _report("worker SIGKILLed after a landing committed, before its ack", "automatically (reconciler)", seconds)


def test_merge_backend_terminated(faults):
    _upload(faults, patients=600)
    clean = _clean(faults)
    worker = faults.start_worker("merger")
    try:
        run_id = _enqueue(faults)
        merging = _until(lambda: bool(_query(
            faults, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE %s "
                    "AND state <> 'idle'", (f"indici-ingest run {run_id} merge %",))), timeout=120, poll=0.005)
        assert merging, "no merge backend was seen"
        terminated_at = time.monotonic()
        status, _ = _closed(faults, run_id, timeout=240, reconcile=False)
        seconds = time.monotonic() - terminated_at
    finally:
        _stop(worker)
    assert status == "succeeded"
    assert _compared(snapshot(faults.url)) == clean
    _report("merge backend terminated", "automatically (task retry)", seconds)


def test_two_runs_enqueued_at_once_are_one_run(faults):
    _upload(faults, patients=100)
    clean = _clean(faults)
    worker = faults.start_worker("pair")
    try:
        started = time.monotonic()
        procs = [subprocess.Popen([sys.executable, "-m", "worker.cli", "--log-level", "ERROR", "run", "--wait",
                                   "--timeout", "200"], env=faults.env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outputs = [p.communicate(timeout=240) for p in procs]
        seconds = time.monotonic() - started
    finally:
        _stop(worker)
    summaries = [json.loads(out[out.index("\n{") + 1:] if not out.startswith("{") else out) for out, _ in outputs]
    assert summaries[0]["load_run_id"] == summaries[1]["load_run_id"], summaries
    assert summaries[0]["status"] == summaries[1]["status"] == "succeeded"
    assert _query(faults, "SELECT count(*) FROM etl.load_runs")[0][0] == 1
    assert _compared(snapshot(faults.url)) == clean
    _report("two runs enqueued at once", "joined (one run)", seconds)


def _redis(port: int, tmp: Path) -> subprocess.Popen:
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    import redis

    assert _until(lambda: _pings(redis.Redis(port=port)), timeout=10, poll=0.05), "redis did not start"
    return server


def _pings(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


@pytest.mark.skipif(not Path("/usr/bin/redis-server").exists(), reason="needs redis-server to restart a broker")
def test_broker_restarted_empty_mid_chord(faults):
    """The broker (and result backend, so the chord's counter) is killed and restarted empty while the
    run's files are being loaded: every queued message is lost."""
    _upload(faults, patients=600)
    clean = _clean(faults)
    port = free_port()
    own = dict(faults.env, CELERY_BROKER_URL=f"redis://127.0.0.1:{port}/0",
               CELERY_RESULT_BACKEND=f"redis://127.0.0.1:{port}/1")
    server = _redis(port, faults.tmp)
    from worker.app import make_app

    client = make_app(faults.settings.model_copy(update={}))
    client.conf.broker_url, client.conf.result_backend = own["CELERY_BROKER_URL"], own["CELERY_RESULT_BACKEND"]
    broker = Faults(faults.settings, own, client, faults.tmp, faults.url)
    worker = SupervisedWorker(broker, "broker-victim")
    try:
        run_id = _enqueue(broker)
        assert _until(lambda: bool(_query(
            faults, "SELECT 1 FROM etl.load_run_files WHERE load_run_id = %s AND status IN ('landed', 'staged')",
            (run_id,))), timeout=60, poll=0.005), "nothing landed"
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
        restarted_at = time.monotonic()
        server = _redis(port, faults.tmp)
        status, _ = _closed(broker, run_id, timeout=300)
        seconds = time.monotonic() - restarted_at
    finally:
        worker.stop()
        client.close()
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
    assert status == "succeeded"
    assert _compared(snapshot(faults.url)) == clean
    _report("broker restarted empty mid-chord",
            f"automatically (reconciler; the worker restarted by its supervisor {worker.restarts} times)", seconds)


def test_two_beats_make_one_nightly_run(faults):
    _upload(faults, patients=100)
    clean = _clean(faults)
    worker = faults.start_worker("beats")
    beats = [subprocess.Popen([sys.executable, "-m", "celery", "-A", "tests.integration.faults.two_beats_app", "beat",
                               "--loglevel=INFO", f"--schedule={faults.tmp / f'beat{i}.db'}"],
                              env=faults.env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True) for i in range(2)]
    try:
        started = time.monotonic()
        assert _until(lambda: bool(_query(faults, "SELECT 1 FROM etl.load_runs WHERE status = 'succeeded'")),
                      timeout=120, poll=0.5)
        seconds = time.monotonic() - started
        time.sleep(8)  # both beats keep sending: every later message finds the night's run
    finally:
        for beat in beats:
            _stop(beat)
        _stop(worker)
    from worker.pipeline.nztime import nz_today

    runs = _query(faults, "SELECT request_key, status FROM etl.load_runs")
    assert runs == [(f"nightly:{nz_today().isoformat()}", "succeeded")], runs
    log = (faults.tmp / "beats.log").read_text(errors="replace")
    assert log.count("Task indici.nightly_run[") >= 8  # many messages from the two beats (received, succeeded)
    assert _compared(snapshot(faults.url)) == clean
    _report("two beats", "one run per night (request key)", seconds)
