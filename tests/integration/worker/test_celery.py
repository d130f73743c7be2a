"""The Celery path with a real worker process: CLI `run --wait`, partial runs, redelivery, task arguments.

One prefork worker (2 processes) is started for the module and stopped at its end. It reads its
configuration from the environment, like in production, so the module uses one bucket (emptied before
each test) instead of `pipeline_settings`' bucket per test; the database and the moto server are the
session's (tests/integration/conftest.py), and data tables are emptied before each test as there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest
from celery import Celery, chain

from contracts import naming
from contracts.registry import get as get_spec
from tests.conftest import REPO_ROOT
from tests.integration.worker.celery_worker import celery_worker
from tests.integration.worker.pipeline.helpers import put_file, query, reset_data
from worker.io.db import connect
from worker.io.s3 import make_client
from worker.pipeline import lifecycle
from worker.pipeline.nztime import nz_today
from worker.pipeline.run import Selection
from worker.settings import Settings

pytestmark = pytest.mark.integration

PRACTICE = [(685146, 535)]
NHI = re.compile(r"\b[A-Z]{3}(?:\d{4}|\d{2}[A-Z]{2})\b")


@dataclass
class Stack:
    settings: Settings
    env: dict[str, str]
    client: Celery  # a client of the test broker (never the process-wide app: its config is global)
    log_path: Path

    def cli(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "worker.cli", *args], env=self.env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=timeout)

    def worker_log(self) -> list[dict]:
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return records


def _empty_bucket(settings: Settings) -> None:
    s3 = make_client(settings)
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=settings.s3_bucket):
        objects = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                   for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        if objects:
            s3.delete_objects(Bucket=settings.s3_bucket, Delete={"Objects": objects})


@pytest.fixture(scope="module")
def stack(migrated_db, s3_server, redis_url, tmp_path_factory) -> Iterator[Stack]:
    from worker.app import make_app

    bucket = f"indici-celery-{uuid.uuid4().hex[:12]}"
    s3 = s3_server.client()
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "ap-southeast-2"})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    env = {
        **os.environ,
        "DATABASE_URL": migrated_db.url,
        "DB_ROLE_PREFIX": migrated_db.role_prefix,
        "S3_BUCKET": bucket,
        "S3_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "ap-southeast-2",
        "NHI_HMAC_KEY": "test-nhi-hmac-key-of-at-least-32-bytes",
        "CELERY_BROKER_URL": redis_url,
        "CELERY_RESULT_BACKEND": redis_url,
    }
    settings = Settings(**{k: v for k, v in env.items() if k in {
        "DATABASE_URL", "DB_ROLE_PREFIX", "S3_BUCKET", "S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY", "NHI_HMAC_KEY", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"}})
    client = make_app(settings)
    node = f"indici-test-{uuid.uuid4().hex[:8]}@%h"
    log_path = tmp_path_factory.mktemp("celery") / "worker.log"
    try:
        with celery_worker(client, env, log_path, node):
            yield Stack(settings, env, client, log_path)
    finally:
        client.close()


@pytest.fixture()
def fresh(stack: Stack) -> Stack:
    reset_data(stack.settings.database_url.get_secret_value())
    _empty_bucket(stack.settings)
    return stack


def _upload(stack: Stack, seed: int, extracts: list[str], faults=None) -> list:
    from worker.synth import build_series

    (batch,) = build_series(seed=seed, patients=10, practices=PRACTICE, deltas=0, extracts=extracts,
                            faults=faults)
    s3 = make_client(stack.settings)
    for f in batch.files:
        put_file(s3, stack.settings.s3_bucket, f.name, f.data)
    return batch.files


def _summary(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("\n{") + 1:] if not stdout.startswith("{") else stdout)


def _files(stack: Stack) -> dict[str, tuple]:
    rows = query(stack.settings, "SELECT s3_key, file_id, load_run_id, status, rows_read, attempts, extract, error "
                                 "FROM etl.load_run_files")
    return {r[0]: r[1:] for r in rows}


def _raw_rows(stack: Stack, extract: str, file_id: int) -> int:
    table = f'{naming.RAW}."{naming.raw_table(get_spec(extract))}"'
    return query(stack.settings, f"SELECT count(*) FROM {table} WHERE load_file_id = %s", (file_id,))[0][0]


def test_run_wait_succeeds_and_every_file_is_merged(fresh):
    files = _upload(fresh, seed=11, extracts=["Patients", "Providers", "Appointments", "Vaccine"])
    done = fresh.cli("run", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = _summary(done.stdout)
    run_id = summary["load_run_id"]
    assert summary["status"] == "succeeded" and summary["files"] == len(files)
    assert f"[{len(files)}/{len(files)}]" in done.stdout  # the progress lines came from etl.load_run_files
    run = query(fresh.settings, "SELECT status, finished_at, error FROM etl.load_runs WHERE load_run_id = %s",
                (run_id,))[0]
    assert run[0] == "succeeded" and run[1] is not None and run[2] is None
    ledger = _files(fresh)
    assert set(ledger) == {f.name for f in files}
    for f in files:
        file_id, file_run, status, rows_read, attempts, extract, _ = ledger[f.name]
        assert (file_run, status, attempts) == (run_id, "merged", 1), f.name
        assert rows_read == f.row_count == _raw_rows(fresh, extract, file_id)
    # Worker logs: JSON lines; a file's lines carry its run and key.
    landed = [r for r in fresh.worker_log() if r.get("event") == "file landed" and r.get("load_run_id") == run_id]
    assert {r["s3_key"] for r in landed} == {f.name for f in files}
    # Without --wait: the run id at once, exit 0 (the run itself goes on in the worker).
    queued = fresh.cli("run")
    assert queued.returncode == 0 and json.loads(queued.stdout)["status"] == "running"
    from worker.orchestration import wait_for_run

    later = wait_for_run(fresh.settings, json.loads(queued.stdout)["load_run_id"], timeout=60, poll=0.2)
    assert later["status"] == "succeeded" and later["files"] == 0  # nothing new: nothing loaded twice


def test_a_broken_file_makes_the_run_partial_and_the_chord_body_still_runs(fresh):
    files = _upload(fresh, seed=12, extracts=["Patients", "Providers", "Vaccine"], faults={"truncated_last_row": 1})
    broken = next(f for f in files if f.faults)
    done = fresh.cli("--log-level", "ERROR", "run", "--wait")
    assert done.returncode == 1, done.stdout + done.stderr
    summary = _summary(done.stdout)
    assert summary["status"] == "partial"
    assert [f["s3_key"] for f in summary["failures"]] == [broken.name]
    assert broken.name in done.stdout and "error:" in done.stdout
    run = query(fresh.settings, "SELECT status, finished_at FROM etl.load_runs WHERE load_run_id = %s",
                (summary["load_run_id"],))[0]
    assert run[0] == "partial" and run[1] is not None  # finalise_run ran: the chord body was reached
    ledger = _files(fresh)
    assert ledger[broken.name][2] == "failed" and "row" in ledger[broken.name][6]
    assert _raw_rows(fresh, ledger[broken.name][5], ledger[broken.name][0]) == 0  # lands whole or not at all
    for f in files:
        if f is not broken:
            assert ledger[f.name][2] == "merged", f.name  # the merge ran for the good files


def test_redelivered_and_duplicated_tasks_process_each_file_once(fresh):
    from worker import orchestration

    files = _upload(fresh, seed=13, extracts=["Providers", "Vaccine", "Medicine"])
    settings, client = fresh.settings, fresh.client
    selection = Selection()
    with connect(settings) as conn:
        run_id = orchestration.create_run(conn, selection, settings)
        plan = lifecycle.plan_run(conn, make_client(settings), settings, selection, run_id)
    assert len(plan.file_ids) == len(files)

    def per_file(file_id: int):
        return chain(client.signature("indici.land_file", (run_id, file_id), immutable=True),
                     client.signature("indici.stage_file", (run_id, file_id), immutable=True))

    # Four copies of every file's chain at once, as redelivery or a second dispatch would send them.
    results = [per_file(file_id).apply_async() for _ in range(4) for file_id in plan.file_ids]
    for result in results:  # the test may wait on results; tasks never do
        assert result.get(timeout=60)["status"] == "staged"
    # The same run enqueued twice: both messages find the plan and dispatch the body (merge, finalise).
    sent = [client.send_task("indici.start_run", (run_id, orchestration.selection_to_json(selection)))
            for _ in range(2)]
    summary = orchestration.wait_for_run(settings, run_id, timeout=60, poll=0.2)
    assert summary["status"] == "succeeded" and summary["files"] == len(files)
    for result in sent:
        result.get(timeout=60)  # the replacing chord's own tasks finished too
    ledger = _files(fresh)
    for f in files:
        file_id, _, status, rows_read, attempts, extract, _ = ledger[f.name]
        assert status == "merged" and attempts == 1, f.name  # one landing, whatever was sent
        assert _raw_rows(fresh, extract, file_id) == rows_read == f.row_count

    # Beat's message delivered twice (same message id), and a second beat's message: one run for the
    # night, and nothing loaded again.
    message_id = str(uuid.uuid4())
    first = client.send_task("indici.nightly_run", task_id=message_id)
    client.send_task("indici.nightly_run", task_id=message_id)
    second_beat = client.send_task("indici.nightly_run")
    first.get(timeout=60)
    second_beat.get(timeout=60)
    nightly = query(settings, "SELECT load_run_id FROM etl.load_runs WHERE request_key = %s",
                    (f"nightly:{nz_today().isoformat()}",))
    assert len(nightly) == 1
    summary = orchestration.wait_for_run(settings, nightly[0][0], timeout=60, poll=0.2)
    assert summary["status"] == "succeeded" and summary["files"] == 0 and summary["already_done"] == len(files)
    assert [r[4] for r in _files(fresh).values()] == [1] * len(files)  # attempts: still one landing


def _leaves(signature) -> Iterator[object]:
    """Every argument value of every task a canvas would send (header, body, errbacks)."""
    from celery.canvas import Signature, _chain, chord, group

    if isinstance(signature, chord):
        for task in signature.tasks:
            yield from _leaves(task)
        yield from _leaves(signature.body)
        return
    if isinstance(signature, (_chain, group)):
        for task in signature.tasks:
            yield from _leaves(task)
    else:
        assert isinstance(signature, Signature)
        yield from _flatten(list(signature.args))
        yield from _flatten(dict(signature.kwargs))
    for errback in signature.options.get("link_error") or []:
        yield from _leaves(errback)


def _flatten(value) -> Iterator[object]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _flatten(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _flatten(item)
    else:
        yield value


def test_task_arguments_hold_only_ids_and_the_selection(fresh):
    from worker import orchestration
    from worker.tasks import run_signature, start_run

    files = _upload(fresh, seed=14, extracts=["Patients", "Vaccine"])
    nhis = {m for f in files for m in NHI.findall(f.data.decode("utf-16-le", errors="ignore"))}
    assert nhis  # the Patients file really holds NHIs
    settings = fresh.settings
    selection = Selection(kind="backfill", date_from=date(2025, 8, 1), date_to=date(2025, 8, 31),
                          extracts=("Patients", "Vaccine"), key_prefix="685146_")
    with connect(settings) as conn:
        run_id = orchestration.create_run(conn, Selection(), settings)
        plan = lifecycle.plan_run(conn, make_client(settings), settings, Selection(), run_id)

    canvas = run_signature(run_id, plan.file_ids)
    assert len(canvas.tasks) == len(files)  # one chain per file in the chord's header
    assert [t.name for t in canvas.body.tasks] == ["indici.merge_dimensions", "indici.finalise_run"]
    arguments = list(_leaves(canvas)) + list(_flatten(
        [start_run.s(run_id, orchestration.selection_to_json(selection)).args]))
    secrets = {settings.nhi_hmac_key.get_secret_value(), settings.database_url.get_secret_value(),
               settings.aws_secret_access_key.get_secret_value(), settings.celery_broker_url.get_secret_value()}
    allowed_strings = {"kind", "backfill", "date_from", "2025-08-01", "date_to", "2025-08-31", "extracts",
                       "Patients", "Vaccine", "key_prefix", "685146_"}
    for value in arguments:
        assert value is None or type(value) in (int, str), repr(value)
        if isinstance(value, str):
            assert value in allowed_strings, value
            assert not NHI.search(value) and value not in secrets
    assert set(a for a in arguments if isinstance(a, int)) == {run_id, *plan.file_ids}
    assert not nhis & {a for a in arguments if isinstance(a, str)}
    # The selection survives the JSON round trip the message makes.
    assert orchestration.selection_from_json(json.loads(json.dumps(orchestration.selection_to_json(selection)))) \
        == selection
