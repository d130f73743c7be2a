"""Structured (JSON) logging. A file's work binds `load_run_id` and `s3_key` so every line carries them.

Values from data rows are never logged: only identifiers of runs, files, rows and columns, and counts.
That keeps NHIs and other personal data out of log lines by construction. As a second line of defence
every rendered line passes through worker.redact, which masks the secrets the settings hold (passwords,
the NHI key) wherever they would appear, e.g. inside an exception message from a library.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Any, Iterator

import structlog

from worker import redact

_CONFIGURED = False


class Redacting:
    """Wraps a structlog renderer: the rendered line with every registered secret masked."""

    def __init__(self, renderer: Any) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        rendered = self.renderer(logger, method_name, event_dict)
        return redact.redact(rendered) if isinstance(rendered, str) else rendered


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
            Redacting(renderer),
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
