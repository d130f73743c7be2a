"""Errors a person can act on: an exception -> one or two lines naming the setting or service, and an
exit code (2: fix the configuration or the command; 1: a service did not answer or the work failed).

`explain(exc, settings)` returns None for an exception it does not know (the CLI then prints its class
and message, masked, and suggests --debug). Messages never hold a password: every URL is shown through
`mask_url`, and a driver's own message is reduced to the part that says what happened.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from pydantic import ValidationError

from worker.pipeline.identity import ConfigurationError
from worker.redact import mask_url
from worker.settings import Settings

EXIT_FAILED, EXIT_USAGE = 1, 2
_QUOTED = re.compile(r'"[^"]*"')


@dataclass(frozen=True)
class Explained:
    message: str
    code: int


def _database(settings: Settings | None) -> tuple[str, str, str]:
    """(masked DATABASE_URL, host:port, database name)."""
    if settings is None:
        return "DATABASE_URL", "the configured host", "the configured database"
    url = settings.database_url.get_secret_value()
    parts = urlsplit(url)
    host = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
    return mask_url(url), host, (parts.path.lstrip("/") or "(default)")


def _postgres(exc: Exception, settings: Settings | None) -> Explained:
    import psycopg

    url, host, name = _database(settings)
    text = str(exc)
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return Explained(f"the database {name} has no indici-ingest schema yet (DATABASE_URL={url}): "
                         "run `indici-ingest migrate`", EXIT_USAGE)
    if re.search(r'database "[^"]*" does not exist', text):
        return Explained(
            f"Postgres database {name!r} does not exist on {host} (DATABASE_URL={url}).\n"
            f"Create it (createdb -h {host.split(':')[0]} -p {host.split(':')[1]} {name}) or point DATABASE_URL "
            "at an existing database, then run `indici-ingest migrate`.", EXIT_USAGE)
    if "password authentication failed" in text or re.search(r'role "[^"]*" does not exist', text) \
            or "no password supplied" in text:
        return Explained(f"Postgres on {host} refused the login (DATABASE_URL={url}): check the user and "
                         "password in DATABASE_URL", EXIT_USAGE)
    if "failed to resolve host" in text or "could not translate host name" in text:
        return Explained(f"the Postgres host in DATABASE_URL={url} does not resolve: check the host name",
                         EXIT_USAGE)
    if isinstance(exc, psycopg.OperationalError):
        reason = "connection refused" if "Connection refused" in text else "no answer"
        return Explained(f"cannot reach Postgres at {host} ({reason}; DATABASE_URL={url}): is it running and "
                         "reachable from here?", EXIT_FAILED)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    first = _QUOTED.sub('"…"', first)  # Postgres quotes values in its messages
    return Explained(f"Postgres error: {type(exc).__name__}: {first}", EXIT_FAILED)


def _s3(exc: Exception, settings: Settings | None) -> Explained | None:
    import botocore.exceptions as be

    endpoint = (settings.s3_endpoint_url if settings and settings.s3_endpoint_url
                else f"AWS S3 in {settings.aws_region if settings else 'the configured region'}")
    bucket = settings.s3_bucket if settings else "the bucket"
    if isinstance(exc, (be.NoCredentialsError, be.PartialCredentialsError)):
        return Explained("no AWS credentials for S3: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or run where "
                         "an instance role or AWS_PROFILE provides them)", EXIT_USAGE)
    if isinstance(exc, (be.EndpointConnectionError, be.ConnectTimeoutError, be.ConnectionClosedError,
                        be.ReadTimeoutError)):
        return Explained(f"cannot reach S3 at {endpoint} (S3_ENDPOINT_URL, AWS_REGION): check the endpoint and "
                         "the network", EXIT_FAILED)
    if isinstance(exc, be.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchBucket", "404"):
            return Explained(f"S3 bucket {bucket!r} does not exist at {endpoint} (S3_BUCKET): check the name",
                             EXIT_USAGE)
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "ExpiredToken",
                    "InvalidToken"):
            return Explained(f"S3 refused access to bucket {bucket!r} ({code}): check AWS_ACCESS_KEY_ID, "
                             "AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) or the bucket policy", EXIT_USAGE)
        return Explained(f"S3 answered {code or 'an error'} for bucket {bucket!r} at {endpoint}", EXIT_FAILED)
    return None


def _validation(exc: ValidationError) -> Explained:
    from worker.settings import Settings as _Settings

    aliases = {name: str(field.validation_alias or name).upper() for name, field in _Settings.model_fields.items()}
    lines = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        lines.append(f"{aliases.get(field, field.upper())}: {error['msg']}")  # never the input: it may be secret
    return Explained("configuration error: " + "; ".join(lines), EXIT_USAGE)


def explain(exc: BaseException, settings: Settings | None = None) -> Explained | None:
    """What to tell the person, or None when the exception is not one this module knows."""
    import psycopg
    import sqlalchemy.exc

    from worker.preflight import UsageError

    if isinstance(exc, sqlalchemy.exc.DBAPIError) and isinstance(exc.orig, Exception):
        exc = exc.orig  # alembic's engine wraps psycopg's error
    if isinstance(exc, ValidationError):
        return _validation(exc)
    if isinstance(exc, ConfigurationError):
        return Explained(f"configuration error: {exc}", EXIT_USAGE)
    if isinstance(exc, UsageError):
        return Explained(str(exc), EXIT_USAGE)
    if isinstance(exc, psycopg.Error):
        return _postgres(exc, settings)
    if isinstance(exc, Exception):
        s3 = _s3(exc, settings)
        if s3 is not None:
            return s3
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return Explained("the address is already in use (serve-health --host/--port): stop what listens there "
                         "or choose another --port", EXIT_USAGE)
    if isinstance(exc, KeyboardInterrupt):
        return Explained("interrupted", 130)
    return None


def broker_message(settings: Settings, error: str) -> str:
    """The line for a run that could not be sent to the workers."""
    reason = " ".join(error.removeprefix("could not enqueue the run: ").split())[:200]
    return (f"could not send the run to the workers: Redis at "
            f"{mask_url(settings.celery_broker_url.get_secret_value())} (CELERY_BROKER_URL, CELERY_RESULT_BACKEND) "
            f"did not take it ({reason}).\nStart Redis or fix the settings, or run the steps here with --inline.")
