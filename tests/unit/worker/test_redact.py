"""Masking URLs and scrubbing registered secrets (the log renderer's and CLI's second line of defence)."""

from __future__ import annotations

import io
import json

import structlog

from worker import log, redact
from worker.settings import Settings


def test_mask_url_hides_only_the_password():
    assert redact.mask_url("postgresql://svc:s3cr%40t@db:5432/indici?sslmode=require") == \
        "postgresql://svc:***@db:5432/indici?sslmode=require"
    assert redact.mask_url("redis://:pw-only-secret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redact.mask_url("postgresql://db/indici") == "postgresql://db/indici"


def test_settings_register_their_secrets_and_redact_masks_them():
    Settings(DATABASE_URL="postgresql://svc:pass%2Fword-x1@db/indici",
             NHI_HMAC_KEY="a-registered-key-that-is-32-bytes-long")
    text = ("dsn postgresql://svc:pass%2Fword-x1@db/indici decoded pass/word-x1 "
            "key a-registered-key-that-is-32-bytes-long")
    masked = redact.redact(text)
    assert "pass%2Fword-x1" not in masked and "pass/word-x1" not in masked
    assert "a-registered-key" not in masked
    assert masked.count(redact.MASK) == 3


def test_short_placeholders_are_not_masked():
    redact.register("demo")
    assert redact.redact("demo run") == "demo run"


def test_log_lines_are_redacted():
    Settings(NHI_HMAC_KEY="another-registered-key-of-32-bytes-x")
    buffer = io.StringIO()
    # Restored after: configuring again here would bind the logger to this test's captured stderr,
    # which pytest closes (tests run later in the session would then fail to log).
    previous = structlog.get_config()
    log.configure("INFO")
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=buffer))
    try:
        structlog.get_logger("t").error("boom", detail="failed with another-registered-key-of-32-bytes-x")
    finally:
        structlog.configure(**previous)
    line = json.loads(buffer.getvalue().strip())
    assert line["detail"] == "failed with ***"
