"""Errors a person can act on: each configuration or infrastructure error is one or two lines naming the
setting or service and what to do, exit 2 for configuration and usage, 1 when a service does not answer,
never a traceback (unless --debug) and never a password."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import psycopg
import pytest

from tests.conftest import SAMPLE_PATIENTS
from tests.integration.worker.pipeline.helpers import put_fixture, query
from worker.io.s3 import make_client

pytestmark = pytest.mark.integration

KEY = "test-nhi-hmac-key-of-at-least-32-bytes"


def _env(settings, **overrides: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "CELERY_", "NOTIFY_"))}
    env.update({
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "DB_ROLE_PREFIX": settings.db_role_prefix,
        "S3_BUCKET": settings.s3_bucket,
        "S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",  # never ask an instance-metadata address for credentials
        "NHI_HMAC_KEY": KEY,
    })
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _cli(settings, *args: str, **env: str | None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.cli", "--log-level", "ERROR", *args],
                          env=_env(settings, **env), capture_output=True, text=True, timeout=120)


def _short_error(done: subprocess.CompletedProcess, code: int, *expected: str) -> str:
    message = done.stderr.strip()
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    assert 1 <= len(message.splitlines()) <= 2, message
    for text in expected:
        assert text in message, (text, message)
    return message


def test_migrate_against_a_missing_database(pipeline_settings):
    url = pipeline_settings.database_url.get_secret_value().rsplit("/", 1)[0] + "/indici_missing_for_test"
    done = _cli(pipeline_settings, "migrate", DATABASE_URL=url)
    _short_error(done, 2, "database 'indici_missing_for_test' does not exist", "DATABASE_URL", "createdb")


def test_debug_adds_the_traceback(pipeline_settings):
    url = pipeline_settings.database_url.get_secret_value().rsplit("/", 1)[0] + "/indici_missing_for_test"
    done = _cli(pipeline_settings, "--debug", "migrate", DATABASE_URL=url)
    assert done.returncode == 2 and "Traceback" in done.stderr and "does not exist" in done.stderr


def test_a_wrong_url_scheme_names_the_setting_and_hides_the_password(pipeline_settings):
    done = _cli(pipeline_settings, "migrate", DATABASE_URL="mysql://user:s3cretpw@h/db")
    message = _short_error(done, 2, "DATABASE_URL must be a PostgreSQL URL", "'mysql://'")
    assert "s3cretpw" not in message
    done = _cli(pipeline_settings, "skipped", CELERY_BROKER_URL="amqp://guest:s3cretpw@rabbit//")
    assert "s3cretpw" not in _short_error(done, 2, "CELERY_BROKER_URL must be a Redis URL")


def test_postgres_unreachable_is_exit_1_and_masks_the_password(pipeline_settings):
    done = _cli(pipeline_settings, "skipped", DATABASE_URL="postgresql://ops:s3cretpw@127.0.0.1:1/indici")
    message = _short_error(done, 1, "cannot reach Postgres at 127.0.0.1:1", "ops:***@")
    assert "s3cretpw" not in message


def test_an_unmigrated_database_says_run_migrate(pipeline_settings, empty_db):
    done = _cli(pipeline_settings, "rejects", DATABASE_URL=empty_db.url)
    _short_error(done, 2, "no indici-ingest schema", "indici-ingest migrate")


def test_s3_unreachable(pipeline_settings):
    done = _cli(pipeline_settings, "run", "--inline", S3_ENDPOINT_URL="http://127.0.0.1:1")
    _short_error(done, 1, "cannot reach S3 at http://127.0.0.1:1", "S3_ENDPOINT_URL")
    assert query(pipeline_settings, "SELECT count(*) FROM etl.load_runs") == [(0,)]  # checked before any work


def test_no_bucket(pipeline_settings):
    done = _cli(pipeline_settings, "run", "--inline", S3_BUCKET="no-such-bucket-for-indici")
    _short_error(done, 2, "S3 bucket 'no-such-bucket-for-indici' does not exist", "S3_BUCKET")


def test_no_credentials(pipeline_settings, tmp_path):
    done = _cli(pipeline_settings, "run", "--inline", AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None,
                AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"))
    _short_error(done, 2, "no AWS credentials", "AWS_ACCESS_KEY_ID")


def test_port_in_use_for_serve_health(pipeline_settings):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _cli(pipeline_settings, "serve-health", "--host", "127.0.0.1", "--port", str(port))
    _short_error(done, 2, "already in use", "--port")


def test_a_non_numeric_trace_key(pipeline_settings):
    done = _cli(pipeline_settings, "trace", "dim_patient", "abc", "535", "685146")
    _short_error(done, 2, "'abc' is not a valid patient_id")


def test_an_unknown_reprocess_id(pipeline_settings):
    done = _cli(pipeline_settings, "reprocess", "999999", "--reason", "test")
    _short_error(done, 2, "no file 999999")


@pytest.mark.parametrize("command", ["run", "backfill"])
def test_an_unknown_extract_names_the_closest(pipeline_settings, command):
    dates = ["--from", "2025-08-01", "--to", "2025-08-31"] if command == "backfill" else []
    done = _cli(pipeline_settings, command, *dates, "--extract", "Patinets", "--inline")
    _short_error(done, 2, "unknown extract 'Patinets'", "did you mean Patients")
    done = _cli(pipeline_settings, "rejects", "--extract", "Foo")
    _short_error(done, 2, "unknown extract 'Foo'")


def test_the_nhi_key_is_checked_before_any_file_lands(pipeline_settings):
    put_fixture(make_client(pipeline_settings), pipeline_settings.s3_bucket, SAMPLE_PATIENTS)
    done = _cli(pipeline_settings, "run", "--inline", NHI_HMAC_KEY=None)
    _short_error(done, 2, "NHI_HMAC_KEY is not set", "Patients", "NextOfKin", "--extract")
    assert query(pipeline_settings, "SELECT count(*) FROM etl.load_run_files") == [(0,)]
    # Extracts without NHIs need no key.
    assert _cli(pipeline_settings, "run", "--inline", "--extract", "Vaccine", NHI_HMAC_KEY=None).returncode == 0


def test_a_bad_notify_url_names_its_entry_not_its_token(pipeline_settings):
    done = _cli(pipeline_settings, "run", "--inline", NOTIFY_URLS="json://127.0.0.1:9/ok, nosuch://tok3n@x")
    message = _short_error(done, 2, "NOTIFY_URLS entry 2 (nosuch)")
    assert "tok3n" not in message


def test_an_unreachable_broker_when_enqueueing(pipeline_settings):
    done = _cli(pipeline_settings, "run", CELERY_BROKER_URL="redis://:s3cretpw@127.0.0.1:1/0",
                CELERY_RESULT_BACKEND="redis://127.0.0.1:1/1")
    message = _short_error(done, 1, "could not send the run to the workers", "CELERY_BROKER_URL", "--inline")
    assert "s3cretpw" not in message
    with psycopg.connect(pipeline_settings.database_url.get_secret_value()) as conn:
        assert conn.execute("SELECT status FROM etl.load_runs").fetchall() == [("failed",)]
