"""WORKER_MAX_MEMORY_MB with a real prefork worker: a pool process whose peak RSS passed the limit is
replaced after its task (which still succeeds), and with 0 the same process runs task after task."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from celery import Celery

from tests.integration.worker.celery_worker import celery_worker
from worker.settings import Settings

pytestmark = pytest.mark.integration
REPLACED = "worker process replaced"


def _json_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(errors="replace").splitlines() if line.startswith("{")]


@contextmanager
def _worker(env: dict[str, str], log_path) -> Iterator[tuple[Celery, str]]:
    """A one-process prefork worker started with `env`; yields a client of its broker and its node name."""
    from worker.app import make_app

    client = make_app(Settings(CELERY_BROKER_URL=env["CELERY_BROKER_URL"],
                               CELERY_RESULT_BACKEND=env["CELERY_RESULT_BACKEND"]))
    node = f"indici-memory-{uuid.uuid4().hex[:8]}@localhost"
    try:
        with celery_worker(client, env, log_path, node, concurrency=1, start_seconds=40):
            yield client, node
    finally:
        client.close()


def _pool_pid(client: Celery, node: str, other_than: int | None = None, wait: float = 20) -> int | None:
    """The pid of the worker's one pool process as the worker reports it, waiting up to `wait` seconds
    for one other than `other_than` (a replaced process is started again by the pool's maintenance)."""
    deadline = time.monotonic() + wait
    while True:
        stats = client.control.inspect(destination=[node], timeout=2).stats() or {}
        pids = stats.get(node, {}).get("pool", {}).get("processes", [])
        if len(pids) == 1 and pids[0] != other_than:
            return pids[0]
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def _pids_across_tasks(env: dict[str, str], log_path, replaced: bool) -> tuple[list[int | None], list]:
    """The pool process's pid before and after each of two tasks (a new one awaited when `replaced`), and
    the tasks' results. celery.accumulate is Celery's own task that returns its arguments: no side effect."""
    with _worker(env, log_path) as (client, node):
        seen: list[int | None] = [_pool_pid(client, node)]
        results = []
        for n in range(2):
            results.append(client.send_task("celery.accumulate", args=(n, "done")).get(timeout=60))
            if replaced:
                seen.append(_pool_pid(client, node, other_than=seen[-1]))
            else:
                time.sleep(1)  # time enough for a replacement, were there one
                seen.append(_pool_pid(client, node))
    return seen, results


@pytest.fixture()
def env(migrated_db, redis_url) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": migrated_db.url,
        "DB_ROLE_PREFIX": migrated_db.role_prefix,
        "CELERY_BROKER_URL": redis_url,
        "CELERY_RESULT_BACKEND": redis_url,
    }


def test_a_pool_process_past_the_limit_is_replaced_after_its_task(env, tmp_path):
    # 1 MB: every Python process is past it, so each task ends with a fresh process.
    seen, results = _pids_across_tasks({**env, "WORKER_MAX_MEMORY_MB": "1"}, tmp_path / "worker.log", replaced=True)
    assert results == [[0, "done"], [1, "done"]]  # each task finished before its process went
    assert None not in seen and len(set(seen)) == 3, seen  # a new process after each of the two tasks
    replaced = [r for r in _json_lines(tmp_path / "worker.log") if r.get("event", "").startswith(REPLACED)]
    assert [r["pid"] for r in replaced] == seen[:2], replaced  # the operator sees which process went and why
    assert all(r["level"] == "warning" and r["peak_rss_mb"] > 1 for r in replaced)


def test_without_a_limit_the_same_process_runs_every_task(env, tmp_path):
    seen, results = _pids_across_tasks({**env, "WORKER_MAX_MEMORY_MB": "0"}, tmp_path / "worker.log", replaced=False)
    assert results == [[0, "done"], [1, "done"]]
    assert seen[0] is not None and seen == [seen[0]] * 3, seen
    assert not [r for r in _json_lines(tmp_path / "worker.log") if r.get("event", "").startswith(REPLACED)]
