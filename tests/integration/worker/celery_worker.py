"""A real Celery worker process for integration tests: started with an environment, awaited until it
answers a ping, stopped with a warm shutdown (killed if it does not stop)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from celery import Celery

from tests.conftest import REPO_ROOT


@contextmanager
def celery_worker(client: Celery, env: dict[str, str], log_path: Path, node: str, concurrency: int = 2,
                  start_seconds: float = 30) -> Iterator[subprocess.Popen]:
    """`celery -A worker.app worker` (prefork, `concurrency` processes, INFO, named `node`) writing its
    log to `log_path`; yields once it answers `client`'s ping."""
    with open(log_path, "wb") as log_file:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--pool=prefork",
             f"--concurrency={concurrency}", "--loglevel=INFO", "-n", node, "--without-gossip", "--without-mingle"],
            env=env, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + start_seconds
        while not client.control.ping(timeout=0.5):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Celery worker did not start:\n{log_path.read_text()[-3000:]}")
        yield worker
    finally:
        worker.terminate()  # warm shutdown
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=10)
