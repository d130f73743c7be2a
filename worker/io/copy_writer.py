"""A COPY writer that sends from a thread, with a bounded queue.

psycopg's QueuedLibpqWriter lets the main thread prepare the next block while a worker thread sends
the previous one (Python work overlaps the COPY Postgres runs), but its queue holds up to 1024 buffers
of 128 KiB: when Postgres is the slower side, a large file would sit in the worker's memory. This one
holds at most `max_buffers` (default 32: 4 MiB), so memory stays bounded and the producer waits.
"""

from __future__ import annotations

from queue import Queue
from typing import Any

from psycopg import Cursor
from psycopg.copy import QueuedLibpqWriter


class BoundedQueuedWriter(QueuedLibpqWriter):
    def __init__(self, cursor: Cursor[Any], max_buffers: int = 32) -> None:
        super().__init__(cursor)
        self._queue = Queue(maxsize=max_buffers)  # type: ignore[assignment]
