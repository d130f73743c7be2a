"""Structured (JSON) logging. A file's work binds `load_run_id` and `s3_key` so every line carries them.

Two sources, one format: the pipeline logs with structlog (`get_logger`), and the standard library's
loggers (Celery's worker, beat, Flower/tornado, libraries) go through `configure_stdlib`'s handler, the
same JSON renderer with the same redaction, and the run/file values bound with `bound` when they are
logged inside a file's work. `connect_celery_signals` (called by worker/app.py) makes Celery leave
logging to this module, at INFO unless `--loglevel` says otherwise (Celery's own default is WARNING,
which would log nothing on a successful night), and replaces the worker's text banner with one JSON
line. Flower configures it from ops/flowerconfig.py.

Values from data rows are never logged: only identifiers of runs, files, rows and columns, and counts.
That keeps NHIs and other personal data out of log lines by construction. As a second line of defence
every rendered line passes through worker.redact, which masks the secrets the settings hold (passwords,
the NHI key) wherever they would appear, e.g. inside an exception message from a library.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from typing import Any

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


class _CurrentStderr:
    """Whatever sys.stderr is when a line is written, not when logging was configured (a replaced
    stderr, such as a test's captured one, may be closed by then)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


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
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),
        cache_logger_on_first_use=False,
    )
    _CONFIGURED = True


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    if not _CONFIGURED:
        configure()
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger


@contextmanager
def bound(**values: Any) -> Iterator[None]:
    """Bind values (e.g. load_run_id, s3_key) to every log line inside the block."""
    with structlog.contextvars.bound_contextvars(**values):
        yield


DEFAULT_LEVEL = "INFO"


def configure_stdlib(level: str | int = DEFAULT_LEVEL) -> None:
    """JSON lines on stderr for the pipeline (structlog) and for every standard-library logger (Celery,
    beat, Flower/tornado, libraries): one handler on the root logger with the same renderer."""
    name = logging.getLevelName(level) if isinstance(level, int) else str(level).upper()
    configure(name)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                Redacting(structlog.processors.JSONRenderer()),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(name)
    logging.captureWarnings(True)  # Python warnings (e.g. Celery's SecurityWarning) as JSON lines too
    for noisy in ("celery", "celery.task", "celery.redirected", "tornado", "tornado.access"):
        logging.getLogger(noisy).handlers = []  # everything reaches the root's JSON handler once
        logging.getLogger(noisy).propagate = True


def _level_given_on_command_line(argv: list[str]) -> bool:
    """Whether `--loglevel X`, `--loglevel=X`, `-l X` or `-lX` is among the arguments."""
    return any(a in ("-l", "--loglevel") or a.startswith("--loglevel=") or (a.startswith("-l") and a[2:3].isalpha())
               for a in argv)


def process_level(celery_level: str | int | None, argv: list[str] | None = None) -> str:
    """The level a Celery process logs at: `--loglevel` when given, else LOG_LEVEL, else INFO (Celery's
    default, WARNING, hides every line of a successful night); LOG_LEVEL is worker/settings.py's log_level."""
    from worker.settings import get_settings

    argv = sys.argv if argv is None else argv
    if celery_level is not None and _level_given_on_command_line(argv):
        return logging.getLevelName(celery_level) if isinstance(celery_level, int) else str(celery_level).upper()
    return get_settings().log_level


_process_level = DEFAULT_LEVEL


def _say_as_json(msg: str, f: Any = sys.__stderr__) -> None:
    """Celery's signal-handler notices as one JSON line, written with os.write (no logging locks)."""
    import json
    import os
    from datetime import datetime

    line = json.dumps({"event": str(msg).strip(), "level": "info", "logger": "celery.apps.worker",
                       "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z")})
    try:
        os.write(f.fileno(), (redact.redact(line) + "\n").encode())
    except (OSError, AttributeError, ValueError):
        pass  # best effort, as Celery's own


def _warning_as_json(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     file: Any = None, line: str | None = None) -> None:
    get_logger("py.warnings").warning(str(message).splitlines()[0] if str(message) else category.__name__,
                                      category=category.__name__, source=f"{filename}:{lineno}")


def connect_celery_signals() -> None:
    """Wire Celery's logging signals to this module (worker and beat main processes, prefork children)."""
    from celery import signals  # type: ignore[import-untyped]

    def on_setup_logging(loglevel: str | int | None = None, **_kwargs: Any) -> None:
        # Connected: Celery then configures no logging of its own (nor its task loggers).
        global _process_level
        _process_level = process_level(loglevel)
        configure_stdlib(_process_level)

    def on_worker_process_init(**_kwargs: Any) -> None:
        # Each prefork child configures again: nothing set up before the fork is assumed to carry over.
        configure_stdlib(_process_level)

    def on_worker_setup(sender: Any = None, instance: Any = None, conf: Any = None, **_kwargs: Any) -> None:
        # The worker's banner is text on stdout; say the same as one JSON line instead.
        if instance is not None:
            instance.quiet = True
            get_logger("worker.app").info(
                "worker starting", hostname=str(sender), concurrency=getattr(instance, "concurrency", None),
                pool=getattr(getattr(instance, "pool_cls", None), "__name__", None),
                queues=sorted(getattr(getattr(instance.app, "amqp", None), "queues", {}) or []))

    def on_worker_process_shutdown(pid: int | None = None, exitcode: int | None = None, **_kwargs: Any) -> None:
        # Sent in a prefork child as it exits. EX_RECYCLE: billiard replaces it because its peak RSS passed
        # worker_max_memory_per_child (worker/app.py); billiard's own warning goes to a logger never set up.
        from billiard.pool import EX_RECYCLE  # type: ignore[import-untyped]

        if exitcode == EX_RECYCLE:
            import resource

            get_logger("worker.app").warning(
                "worker process replaced: its peak memory passed WORKER_MAX_MEMORY_MB", pid=pid,
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)

    def on_beat_init(sender: Any = None, **_kwargs: Any) -> None:
        get_logger("worker.app").info("beat starting", schedule=sorted(getattr(sender.app.conf, "beat_schedule", {})))

    # Python warnings raised before Celery sets up logging (e.g. its SecurityWarning when started as root)
    # are JSON lines too.
    warnings.showwarning = _warning_as_json
    # The worker's shutdown notices are written straight to a file descriptor from a signal handler
    # (celery.apps.worker.safe_say): the same, as a JSON line.
    import celery.apps.worker  # type: ignore[import-untyped]

    celery.apps.worker.safe_say = _say_as_json
    signals.setup_logging.connect(on_setup_logging, weak=False)
    signals.worker_process_init.connect(on_worker_process_init, weak=False)
    signals.celeryd_after_setup.connect(on_worker_setup, weak=False)
    signals.worker_process_shutdown.connect(on_worker_process_shutdown, weak=False)
    signals.beat_init.connect(on_beat_init, weak=False)
