"""First start of `docker compose up`: generate the stack's secrets into its volumes, once.

    python ops/compose_secrets.py /secrets        (the `secrets-init` service of docker-compose.yml)

One volume per kind of consumer, so each container sees only what it needs:

    db/       postgres_password (the container's superuser, used by initdb only), migrator_password
    redis/    redis.conf (requirepass), redis_password (for the health check)
    admin/    migration_database_url (the indici_migrator login), service_password (for grant-login)
    service/  database_url (the indici_service login: etl_writer only), celery_broker_url,
              celery_result_backend
    nhi/      nhi_hmac_key (the worker only)
    flower/   flower_basic_auth, celery_broker_url, celery_result_backend

Passwords and the NHI key are generated only when missing: a restart never changes them (a new NHI key
would need `indici-ingest rekey`). To bring your own key, set NHI_HMAC_KEY for the first start (at least
32 bytes); a later start with a different NHI_HMAC_KEY is refused. The URLs and redis.conf are derived
from the passwords on every start. Files are mode 0400, owned by the user of the container that reads
them (when this runs as root); nothing is printed but the file names.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

# Users of the images that read each volume: the official postgres and redis images run as uid 999;
# the application image as 10001 (Dockerfile).
OWNERS = {"db": 999, "redis": 999, "admin": 10001, "service": 10001, "nhi": 10001, "flower": 10001}
PASSWORDS = {
    ("db", "postgres_password"), ("db", "migrator_password"), ("redis", "redis_password"),
    ("admin", "service_password"), ("flower", "flower_password"),
}
MIN_NHI_KEY_BYTES = 32
MIGRATOR, SERVICE, FLOWER_USER = "indici_migrator", "indici_service", "indici"
POSTGRES, REDIS = "postgres:5432/indici", "redis:6379"


def _write(path: Path, text: str, owner: int | None) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o400)
    if owner is not None:
        os.chown(tmp, owner, owner)
    os.replace(tmp, path)


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.exists() else None


def generate(root: Path, supplied_key: str | None = None, chown: bool | None = None,
             notify_urls: str | None = None) -> list[str]:
    """Create or complete the secrets under `root`; returns the files written (relative names)."""
    chown = (os.geteuid() == 0) if chown is None else chown
    written: list[str] = []

    def put(volume: str, name: str, text: str) -> None:
        path = root / volume / name
        if _read(path) != text:
            _write(path, text, OWNERS[volume] if chown else None)
            written.append(f"{volume}/{name}")

    for volume in OWNERS:
        (root / volume).mkdir(parents=True, exist_ok=True)
        os.chmod(root / volume, 0o700)  # writable by this process while it fills the volume
    values = {}
    for volume, name in sorted(PASSWORDS):
        values[name] = _read(root / volume / name) or secrets.token_urlsafe(24)
        put(volume, name, values[name])

    existing = _read(root / "nhi" / "nhi_hmac_key")
    if supplied_key:
        if len(supplied_key.encode("utf-8")) < MIN_NHI_KEY_BYTES:
            raise SystemExit(f"NHI_HMAC_KEY must be at least {MIN_NHI_KEY_BYTES} bytes")
        if existing is not None and existing != supplied_key:
            raise SystemExit("NHI_HMAC_KEY differs from the key already in the nhi volume: rotating it needs "
                             "NHI_HMAC_KEY_PREVIOUS and `indici-ingest rekey`, not a new start")
    put("nhi", "nhi_hmac_key", existing or supplied_key or secrets.token_urlsafe(32))

    redis_password = values["redis_password"]
    broker, results = f"redis://:{redis_password}@{REDIS}/0", f"redis://:{redis_password}@{REDIS}/1"
    put("redis", "redis.conf", f"port 6379\nprotected-mode yes\nrequirepass {redis_password}\n")
    put("admin", "migration_database_url", f"postgresql://{MIGRATOR}:{values['migrator_password']}@{POSTGRES}")
    put("service", "database_url", f"postgresql://{SERVICE}:{values['service_password']}@{POSTGRES}")
    for volume in ("service", "flower"):
        put(volume, "celery_broker_url", broker)
        put(volume, "celery_result_backend", results)
    # Notification URLs carry tokens, so they travel as a secret file too; empty means no notifications.
    # Unlike the generated secrets they follow NOTIFY_URLS on every start, so an operator can change them.
    put("service", "notify_urls", notify_urls if notify_urls is not None else (_read(root / "service" / "notify_urls") or ""))
    put("flower", "flower_basic_auth", f"{FLOWER_USER}:{values['flower_password']}")
    for volume, owner in OWNERS.items():  # read-only for its reader from here on
        if chown:
            os.chown(root / volume, owner, owner)
        os.chmod(root / volume, 0o500)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="where the secret volumes are mounted")
    args = parser.parse_args(argv)
    written = generate(args.root, os.environ.get("NHI_HMAC_KEY") or None, notify_urls=os.environ.get("NOTIFY_URLS"))
    print(f"secrets ready under {args.root} ({len(written)} written: {', '.join(written) or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
