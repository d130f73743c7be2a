"""Worker liveness for the health report: can the broker be reached, and does a Celery worker answer?

A broadcast ping (`app.control.ping`) is answered by each worker's main process, also while its pool
is busy with long tasks, so a silent cluster means no worker is consuming. The timeouts are short:
a health check must answer quickly. With no CELERY_BROKER_URL in the environment (an --inline-only
installation) no broker is asked (the default URL is a development default) and that is reported, not
a problem.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery

from worker.settings import Settings

PING_TIMEOUT = 1.0
CONNECT_TIMEOUT = 2.0


@lru_cache(maxsize=4)
def _client(broker_url: str, backend_url: str) -> Celery:
    """A Celery client of this broker (the process-wide app is bound to the process's settings)."""
    return Celery("indici_ingest_health", broker=broker_url, backend=backend_url,
                  broker_connection_retry_on_startup=False)


def broker_configured(settings: Settings) -> bool:
    """Whether CELERY_BROKER_URL was set (the default points at a local Redis for development)."""
    return "celery_broker_url" in settings.model_fields_set


def worker_liveness(settings: Settings, timeout: float = PING_TIMEOUT) -> dict[str, Any]:
    """{"broker_configured", "broker_reachable", "workers": [names], "alive", "error"?} (never a URL)."""
    report: dict[str, Any] = {"broker_configured": broker_configured(settings)}
    if not report["broker_configured"]:
        # The default URL is a developer's local Redis: its workers, if any, are not this installation's.
        return {**report, "broker_reachable": None, "workers": [], "alive": None,
                "note": "CELERY_BROKER_URL is not set: workers not checked (an --inline installation)"}
    client = _client(settings.celery_broker_url.get_secret_value(), settings.celery_result_backend.get_secret_value())
    try:
        with client.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=CONNECT_TIMEOUT)
        replies = client.control.ping(timeout=timeout)
    except Exception as exc:  # any failure means "unreachable" for a health check; the class says which
        return {**report, "broker_reachable": False, "workers": [], "alive": False, "error": type(exc).__name__}
    workers = sorted(name for reply in replies or [] for name in reply)
    return {**report, "broker_reachable": True, "workers": workers, "alive": bool(workers)}


def liveness_problem(liveness: dict[str, Any]) -> str | None:
    """The health problem the liveness is, or None (never one without a configured broker)."""
    if not liveness["broker_configured"]:
        return None
    if not liveness["broker_reachable"]:
        return (f"the Celery broker (CELERY_BROKER_URL) cannot be reached ({liveness.get('error')}): "
                "start Redis or fix the setting")
    if not liveness["alive"]:
        return "no Celery worker answered a ping: start one with `celery -A worker.app worker`"
    return None
