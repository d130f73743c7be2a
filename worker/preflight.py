"""Checks made before any work, so that a wrong setting is one clear line instead of a failure later.

- `check_settings(settings)`: URL schemes of DATABASE_URL (and MIGRATION_DATABASE_URL when the
  settings have it), CELERY_BROKER_URL, CELERY_RESULT_BACKEND and S3_ENDPOINT_URL; every NOTIFY_URLS
  entry is one apprise supports. All problems at once, each naming its setting (never its value: URLs
  may hold passwords).
- `resolve_extracts(names)`: contract names for `--extract` values (names or file tokens, any case);
  an unknown one is a UsageError listing the closest valid names.
- `check_nhi_key(settings, extracts)`: NHI_HMAC_KEY is set whenever the selection can hold an extract
  with NHI numbers (every extract when none is named).
- `check_plan_keys(conn, settings, file_ids)`: the same for the files a run has planned (the Celery
  path's workers check it before dispatching any file).
- `check_s3(settings)` and `check_database(settings)`: one quick call each (bucket, credentials,
  endpoint; connection and schema), with short timeouts and no retries, before an --inline run.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from urllib.parse import urlsplit

import psycopg
from botocore.config import Config

from contracts.registry import load_all
from contracts.sql.merge import nhi_columns
from worker.pipeline.identity import ConfigurationError
from worker.settings import Settings

POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2")
REDIS_SCHEMES = ("redis", "rediss", "sentinel")


class UsageError(ValueError):
    """A command-line argument that cannot be right (exit 2)."""


def _scheme(url: str) -> str:
    return urlsplit(url).scheme.lower() if "://" in url else ""


def _url_problem(setting: str, url: str, schemes: Sequence[str], kind: str, example: str) -> str | None:
    scheme = _scheme(url)
    if scheme in schemes and urlsplit(url).netloc + urlsplit(url).path:
        return None
    found = f"it starts with {scheme + '://'!r}" if scheme else "it is not a URL"
    return f"{setting} must be a {kind} URL such as {example}; {found}"


def check_settings(settings: Settings) -> None:
    """Raise ConfigurationError naming every malformed setting."""
    problems = []
    database_urls = [("DATABASE_URL", settings.database_url.get_secret_value())]
    migration = getattr(settings, "migration_database_url", None)
    if migration is not None:
        database_urls.append(("MIGRATION_DATABASE_URL", migration.get_secret_value()))
    for setting, url in database_urls:
        problems.append(_url_problem(setting, url, POSTGRES_SCHEMES, "PostgreSQL",
                                     "postgresql://user:password@host:5432/indici"))
    for setting, secret in (("CELERY_BROKER_URL", settings.celery_broker_url),
                            ("CELERY_RESULT_BACKEND", settings.celery_result_backend)):
        problems.append(_url_problem(setting, secret.get_secret_value(), REDIS_SCHEMES, "Redis",
                                     "redis://host:6379/0"))
    if settings.s3_endpoint_url:
        problems.append(_url_problem("S3_ENDPOINT_URL", settings.s3_endpoint_url, ("http", "https"), "http(s)",
                                     "http://127.0.0.1:5000 (unset it for AWS S3)"))
    problems += notify_url_problems(settings)
    found = [p for p in problems if p]
    if found:
        raise ConfigurationError("\n".join(found))


def notify_url_problems(settings: Settings) -> list[str]:
    from worker.pipeline.notify import notify_urls

    urls = notify_urls(settings)
    if not urls:
        return []
    import apprise

    problems = []
    for index, url in enumerate(urls, 1):
        if not apprise.Apprise().add(url):
            scheme = _scheme(url) or "no scheme"
            problems.append(f"NOTIFY_URLS entry {index} ({scheme}) is not a URL apprise supports: see "
                            "https://github.com/caronc/apprise/wiki for the forms (comma-separated)")
    return problems


def resolve_extracts(names: Sequence[str]) -> tuple[str, ...]:
    """Contract names for extract names or file tokens (any case); UsageError with the closest names."""
    specs = load_all()
    by_lower = {name.lower(): name for name in specs}
    for spec in specs.values():
        for token in spec.file_tokens:
            by_lower.setdefault(token.lower(), spec.extract)
    resolved = []
    for name in names:
        found = by_lower.get(name.strip().lower())
        if found is None:
            close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
            suggestions = list(dict.fromkeys(by_lower[c] for c in close))
            hint = f"; did you mean {' or '.join(suggestions)}?" if suggestions else ""
            raise UsageError(f"unknown extract {name!r}{hint} (the extracts: {', '.join(sorted(specs))})")
        if found not in resolved:
            resolved.append(found)
    return tuple(resolved)


def nhi_extracts() -> list[str]:
    """Extracts holding NHI numbers (their merge needs NHI_HMAC_KEY)."""
    return sorted(name for name, spec in load_all().items() if nhi_columns(spec))


def _key_set(settings: Settings) -> bool:
    return settings.nhi_hmac_key is not None and bool(settings.nhi_hmac_key.get_secret_value())


def check_nhi_key(settings: Settings, extracts: Sequence[str]) -> None:
    """ConfigurationError when the selection (`extracts`, empty = all) can hold NHIs and there is no key."""
    if _key_set(settings):
        return
    wanted = set(extracts) if extracts else set(load_all())
    needing = [e for e in nhi_extracts() if e in wanted]
    if needing:
        raise ConfigurationError(
            f"NHI_HMAC_KEY is not set: it is required to load {', '.join(needing)} (they hold NHI numbers). "
            "Set it to a secret of at least 32 bytes, or leave those extracts out with --extract.")


def check_plan_keys(conn: psycopg.Connection, settings: Settings, file_ids: Sequence[int]) -> None:
    """check_nhi_key for the extracts of a planned run's files (before any of them is landed)."""
    if _key_set(settings) or not file_ids:
        return
    extracts = [r[0] for r in conn.execute(
        "SELECT DISTINCT extract FROM etl.load_run_files WHERE file_id = ANY(%s)", (list(file_ids),)).fetchall()]
    if extracts:
        check_nhi_key(settings, extracts)


def check_s3(settings: Settings) -> None:
    """One HeadBucket with a short timeout and no retries; botocore's exception says what is wrong."""
    from worker.io.s3 import make_client

    client = make_client(settings, config=Config(retries={"max_attempts": 1, "mode": "standard"},
                                                 connect_timeout=5, read_timeout=10))
    client.head_bucket(Bucket=settings.s3_bucket)


def check_database(settings: Settings) -> None:
    """Connect and look for the schema; psycopg's exception says what is wrong."""
    from worker.io.db import connect

    with connect(settings, autocommit=True) as conn:
        conn.execute("SELECT 1 FROM etl.load_runs LIMIT 0")
