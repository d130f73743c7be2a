"""Structured (JSON) logging. A file's work binds `load_run_id` and `s3_key` so every line carries them.

Values from data rows are never logged: only identifiers of runs, files, rows and columns, and counts.
That keeps NHIs and other personal data out of log lines by construction.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Iterator

import structlog

_CONFIGURED = False


def configure(level: str = "INFO", json: bool = True) -> None:
    """JSON lines to stderr (human-readable console rendering when json=False)."""
    global _CONFIGURED
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), 20)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _CONFIGURED = True


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    if not _CONFIGURED:
        configure()
    return structlog.get_logger(name)


@contextmanager
def bound(**values) -> Iterator[None]:
    """Bind values (e.g. load_run_id, s3_key) to every log line inside the block."""
    with structlog.contextvars.bound_contextvars(**values):
        yield
