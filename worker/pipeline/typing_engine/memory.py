"""Which allocator Arrow uses in a process that types files.

pyarrow's default pool is mimalloc, which keeps the pages a block's arrays freed for the blocks to come.
A block's arrays live only while it is typed, but their pages stay in the process: typing 24k Patients
rows (220 columns, 8 MiB blocks) peaked at about 300 MB of RSS for an Arrow pool that never held more
than 33 MB at once. jemalloc, as Arrow configures it, gives freed pages back to the system after a
short decay.
`python -m bench.typing`, peak RSS of the typing process, two runs each, mimalloc -> jemalloc (both with
stage.py's encoding in slices): 100k Patients 276-279 MB -> 259-266 MB at 5.70/7.39 s -> 5.70/7.42 s,
the same stg bytes. 300k Appointments, before both changes (whole-block encoding, mimalloc) 247 MB, after
both 225-227 MB, the same stg bytes (times too noisy that hour to compare).
Against 0c2bbca (whole blocks, mimalloc), interleaved, two rounds: 100k Patients 292-294 MB -> 260 MB,
5.43/5.39 s -> 5.91/6.22 s. The wide extract may type up to 10-15% slower; this hour's noise (the same
code's runs differ by more) did not let me tell. So a process that types uses jemalloc where this
pyarrow has it: the memory is the budget a worker is sized by.

ARROW_DEFAULT_MEMORY_POOL, Arrow's own setting, still wins: an operator who sets it gets that pool.
"""

from __future__ import annotations

import os

import pyarrow as pa

from worker.log import get_logger

log = get_logger(__name__)

_chosen: str | None = None


def use_typing_pool() -> str:
    """Make jemalloc the process's default Arrow pool (once), unless ARROW_DEFAULT_MEMORY_POOL names one
    or this build has no jemalloc. Returns the backend in use. Called when a typing engine is built, in
    the process that types (a Celery pool process after the fork, the CLI), not at import."""
    global _chosen
    if _chosen is None:
        if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
            try:
                pa.set_memory_pool(pa.jemalloc_memory_pool())
            except NotImplementedError:  # a pyarrow built without jemalloc: its default stays
                log.info("arrow has no jemalloc pool; typing keeps the default",
                         pool=pa.default_memory_pool().backend_name)
        _chosen = pa.default_memory_pool().backend_name
    return _chosen
