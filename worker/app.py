"""The Celery app: `celery -A worker.app worker | beat | flower`.

Configuration comes from the one Settings class (the same environment as the CLI). This is the only
module that reads the broker and result-backend secrets.

Delivery choices, and why:
- `task_acks_late` + `task_reject_on_worker_lost`: a message is acknowledged only after its task
  finished, so a worker killed half-way through a file gives the file to another worker instead of
  losing it. That means a task can run twice; every task is idempotent (advisory locks and unique
  constraints in Postgres decide, see worker/pipeline/ledger.py), so a second run does nothing.
- `worker_prefetch_multiplier=1`: tasks are long (a file, a merge); a worker process should not hold a
  queue of them that an idle process could be running.
- `worker_max_memory_per_child` (WORKER_MAX_MEMORY_MB): a pool process whose peak RSS went past it is
  replaced after its task, so memory kept by allocators over weeks, or a spike, is given back.
- Soft and hard time limits (TASK_SOFT_TIME_LIMIT, TASK_TIME_LIMIT): a task that hangs is stopped
  (soft: its transaction rolls back and the file is recorded failed, retryable) and then killed (hard).
- Redis `visibility_timeout` (Settings.visibility_timeout): with late acks, Redis redelivers a message
  that has not been acknowledged within this time, even if its worker is still busy. It is derived
  from the hard time limit plus the longest retry countdown, so a message is never redelivered while
  its task can still run. It bounds how long a message of a worker killed with -9 waits before Redis
  redelivers it; the reconciler (scheduler/beat.py) does not wait that long: a file whose lease
  expired (hard limit + 1 min) is re-enqueued by it.
- Two queues: `indici.files` (landing and staging: many processes, S3 and COPY bound) and
  `indici.merges` (planning, merges, closing, the reconciler: the only worker holding the NHI key).
  docker-compose.yml runs one worker per queue, each with its own `--concurrency`
  (the compose variables FILES_CONCURRENCY, default 4, and MERGES_CONCURRENCY, default 1).
- JSON only, in both directions: task arguments are ids, dates and strings (see worker/tasks.py), and
  a pickle-capable worker would be a code-execution hole for anyone who can write to Redis.
- `timezone='Pacific/Auckland'` with `enable_utc=True`: messages and stored times stay UTC; beat's
  crontab entries are read as New Zealand wall-clock times (scheduler/beat.py explains the DST choice).
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from scheduler import BEAT_SCHEDULE
from worker import log
from worker.settings import Settings, get_settings

FILES_QUEUE = "indici.files"
MERGES_QUEUE = "indici.merges"
TASK_ROUTES = {
    "indici.land_file": {"queue": FILES_QUEUE},
    "indici.stage_file": {"queue": FILES_QUEUE},
    "indici.start_run": {"queue": MERGES_QUEUE},
    "indici.nightly_run": {"queue": MERGES_QUEUE},
    "indici.merge_run": {"queue": MERGES_QUEUE},
    "indici.merge_dimensions": {"queue": MERGES_QUEUE},
    "indici.merge_facts": {"queue": MERGES_QUEUE},
    "indici.finalise_run": {"queue": MERGES_QUEUE},
    "indici.fail_run": {"queue": MERGES_QUEUE},
    "indici.reconcile": {"queue": MERGES_QUEUE},
}
# Results are only read by Celery itself (chord counting); nothing waits on them. Keep them a couple
# of days so Flower can still show what a night's run returned.
RESULT_EXPIRES = 2 * 24 * 60 * 60


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    celery_app = Celery("indici_ingest", include=["worker.tasks"])
    celery_app.conf.update(
        broker_url=settings.celery_broker_url.get_secret_value(),
        result_backend=settings.celery_result_backend.get_secret_value(),
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Billiard compares the process's peak RSS (getrusage ru_maxrss, KiB) after each task; None: no limit.
        worker_max_memory_per_child=settings.worker_max_memory_mb * 1024 or None,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_time_limit,
        task_routes=TASK_ROUTES,
        # A worker started without -Q consumes both queues (development, tests); compose starts one
        # worker per queue with -Q.
        task_queues=(Queue(FILES_QUEUE), Queue(MERGES_QUEUE)),
        task_default_queue=MERGES_QUEUE,
        timezone="Pacific/Auckland",
        enable_utc=True,
        beat_schedule=BEAT_SCHEDULE,
        result_expires=RESULT_EXPIRES,
        result_extended=False,  # never copy task arguments into the result backend
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        # A broker connection loss means every unacknowledged message will be redelivered; cancel the
        # running copies instead of finishing work another worker is about to repeat.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # The pipeline writes JSON lines to stderr itself; Celery's redirect would wrap each of them
        # in a second, non-JSON log line.
        worker_redirect_stdouts=False,
        task_send_sent_event=True,  # Flower shows queued tasks, not only started ones
        worker_send_task_events=True,
    )
    return celery_app


app = make_app()


def connection_error(timeout: float = 2.0) -> str | None:
    """None when the broker answers, else the kind of error (no URL: it may hold a password)."""
    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
        return None
    except Exception as exc:  # any failure means "unreachable" for a health check
        return type(exc).__name__


# -- logging -----------------------------------------------------------------------------------------
def configure_logging(level: str | int = "INFO") -> None:
    """JSON lines on stderr for the pipeline (structlog) and for Celery's own messages (stdlib)."""
    log.configure_stdlib(level)


# Celery leaves logging to worker/log.py (INFO unless --loglevel says otherwise; the banner as JSON).
log.connect_celery_signals()
