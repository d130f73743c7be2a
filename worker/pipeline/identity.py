"""NZ identifiers: NHI normalisation, check-character validation and the keyed hash core stores.

Rules (shared/indici/README.md, PRODUCT.md):
- normalise: trim, upper-case; empty -> None.
- valid: old format AAANNNC or new format AAANNAX, letters exclude I and O, check character as documented.
- hash: lower-case hex HMAC-SHA256(key = NHI_HMAC_KEY as UTF-8, message = normalised NHI as UTF-8);
  None when the NHI is empty. Invalid NHIs are hashed too (core flags them with <stem>_valid = false).

The key never leaves Python: merges hash the distinct NHIs here and send only (value, hash, valid, key
version) rows to Postgres. Which key a merge uses, and rotating it, is worker/pipeline/nhi_keys.py; the
settings refuse keys shorter than 32 bytes. Nothing in this module logs a value.
"""

from __future__ import annotations

import hashlib
import hmac
import re

LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # A=1 ... Z=24, I and O excluded
_OLD = re.compile(r"^[A-HJ-NP-Z]{3}[0-9]{4}$")
_NEW = re.compile(r"^[A-HJ-NP-Z]{3}[0-9]{2}[A-HJ-NP-Z]{2}$")


class ConfigurationError(RuntimeError):
    """A setting the step needs is missing (e.g. NHI_HMAC_KEY when an extract holds NHIs)."""


def normalise_nhi(value: str | None) -> str | None:
    """Trimmed and upper-cased; None when missing or empty."""
    if value is None:
        return None
    text = value.strip().upper()
    return text or None


def _value(ch: str) -> int:
    if ch.isdigit():
        return int(ch)
    return LETTERS.index(ch) + 1


def nhi_is_valid(value: str | None) -> bool:
    """True when the (normalised) NHI has either documented format and its check character holds."""
    nhi = normalise_nhi(value)
    if nhi is None:
        return False
    if _OLD.match(nhi):
        total = sum(_value(nhi[i]) * (7 - i) for i in range(6))
        r = total % 11
        return r != 0 and (11 - r) % 10 == int(nhi[6])
    if _NEW.match(nhi):
        total = sum(_value(nhi[i]) * (7 - i) for i in range(6))
        return 23 - (total % 23) == _value(nhi[6])
    return False


def hmac_key(secret: str) -> bytes:
    """The HMAC key bytes of NHI_HMAC_KEY (UTF-8)."""
    return secret.encode("utf-8")


def nhi_hash(key: bytes, nhi: str | None) -> str | None:
    """Lower-case hex HMAC-SHA256 of the normalised NHI; None when the NHI is empty."""
    normalised = normalise_nhi(nhi)
    if normalised is None:
        return None
    return hmac.new(key, normalised.encode("utf-8"), hashlib.sha256).hexdigest()


def key_from_settings(settings, extract: str) -> bytes:
    """NHI_HMAC_KEY as bytes, or a clear configuration error naming the extract that needs it."""
    secret = getattr(settings, "nhi_hmac_key", None)
    value = secret.get_secret_value() if secret is not None else ""
    if not value:
        raise ConfigurationError(
            f"NHI_HMAC_KEY is not set: it is required to merge {extract}, which holds NHI numbers"
        )
    return hmac_key(value)
