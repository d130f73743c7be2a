"""Keeping secrets out of output: masking URLs and scrubbing known secret values from text.

Every Settings instance registers its secret values here (passwords inside URLs included), so the log
renderer and the command line's error output can replace them with `***` wherever they would appear.
This is a second line of defence: code never prints or logs a secret on purpose (worker/log.py).
"""

from __future__ import annotations

import re
import threading
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

MASK = "***"
# Query parameters whose value is a credential (libpq accepts password=...; apprise URLs carry tokens).
SECRET_QUERY_PARAMETERS = frozenset({"password", "pass", "passwd", "secret", "token", "key", "apikey",
                                     "access_token"})
# Shorter values are placeholders ("demo", "local"); masking them would only garble ordinary words.
MIN_SECRET_LENGTH = 6

_lock = threading.Lock()
_secrets: set[str] = set()
_ordered: tuple[str, ...] = ()
_PERCENT_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def register(*values: str | None) -> None:
    """Remember values that must never appear in output (idempotent)."""
    global _ordered
    new = {v for v in values if v and len(v) >= MIN_SECRET_LENGTH} - _secrets
    if not new:
        return
    with _lock:
        _secrets.update(new)
        # Longest first, so a URL is masked whole before the password inside it is.
        _ordered = tuple(sorted(_secrets, key=len, reverse=True))


def register_url(url: str | None) -> None:
    """Register a URL's password, raw and percent-decoded (the URL itself is masked via its password)."""
    if not url:
        return
    password = url_password(url)
    if password:
        register(password, unquote(password))


def redact(text: str) -> str:
    """`text` with every registered secret replaced by ***."""
    for secret in _ordered:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def url_password(url: str) -> str | None:
    """The password part of a URL as written (still percent-encoded), or None."""
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return None
    userinfo, at, _ = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return None
    return userinfo.split(":", 1)[1] or None


def mask_url(url: str) -> str:
    """The URL with its password (in the authority, or a secret-named query parameter such as
    `password=`) replaced by *** (user, host, port, database and other parameters kept as written)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        parts = parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:{MASK}@{hostport}")
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if any(key.lower() in SECRET_QUERY_PARAMETERS for key, _ in pairs):
        parts = parts._replace(query=urlencode(
            [(key, MASK if key.lower() in SECRET_QUERY_PARAMETERS else value) for key, value in pairs], safe="*"))
    return urlunsplit(parts)


def malformed_percent_escape(url: str) -> bool:
    """True when a `%` is not followed by two hex digits (libpq would echo the token in its error)."""
    return bool(_PERCENT_ESCAPE.search(url))
