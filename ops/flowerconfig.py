"""Flower's configuration: `celery -A worker.app flower --conf=ops/flowerconfig.py`.

Basic auth comes from the FLOWER_BASIC_AUTH setting (worker/settings.py; `user:password`, comma-separated
for several, or FLOWER_BASIC_AUTH_FILE), and Flower refuses to start without it: its UI can revoke
tasks and shut workers down. It listens on this machine only unless `--address` says otherwise (the
compose file gives 0.0.0.0 inside the container and publishes the port on 127.0.0.1 only).
Tornado executes this file and takes the globals named like Flower's options. Flower's and tornado's
log lines are JSON like the rest of the service (worker/log.py), at LOG_LEVEL (default INFO).
"""

from worker.log import configure_stdlib as _json_logs
from worker.settings import get_settings

_json_logs(get_settings().log_level)

_auth = get_settings().flower_basic_auth
if _auth is None or not _auth.get_secret_value().strip():
    raise SystemExit("FLOWER_BASIC_AUTH is not set: Flower's UI would be open to anyone who reaches it")

basic_auth = [entry.strip() for entry in _auth.get_secret_value().split(",") if entry.strip()]
address = "127.0.0.1"
