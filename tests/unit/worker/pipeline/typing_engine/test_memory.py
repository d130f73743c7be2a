"""A process that types files uses jemalloc for Arrow unless the operator chose a pool
(typing_engine/memory.py). The pool is process-wide, so each case runs in its own interpreter."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pytest

PROBE = (
    "import pyarrow as pa\n"
    "from contracts.registry import get\n"
    "from worker.pipeline.typing_engine.engine import TypingEngine\n"
    "before = pa.default_memory_pool().backend_name\n"
    "TypingEngine(get('Appointments'))\n"
    "print(before, pa.default_memory_pool().backend_name)\n"
)


def _pools(env_pool: str | None) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if env_pool is not None:
        env["ARROW_DEFAULT_MEMORY_POOL"] = env_pool
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, check=True, capture_output=True, text=True)
    before, after = out.stdout.split()
    return before, after


def _has_jemalloc() -> bool:
    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:
        return False
    return True


@pytest.mark.skipif(not _has_jemalloc(), reason="this pyarrow has no jemalloc")
def test_building_an_engine_switches_the_process_to_jemalloc():
    before, after = _pools(None)
    assert before != "jemalloc"  # Arrow's own default (mimalloc) until an engine is built
    assert after == "jemalloc"


def test_an_operator_chosen_pool_is_kept():
    before, after = _pools("system")
    assert before == after == "system"
