"""Settings checked before any work, extract names resolved, errors explained without secrets."""

from __future__ import annotations

import botocore.exceptions
import pytest

from worker.errors import explain
from worker.pipeline.identity import ConfigurationError
from worker.preflight import UsageError, check_nhi_key, check_settings, resolve_extracts
from worker.redact import mask_url
from worker.settings import Settings


def test_mask_url_hides_passwords_in_authority_and_query():
    assert mask_url("postgresql://ops:pw@db:5432/indici") == "postgresql://ops:***@db:5432/indici"
    assert mask_url("redis://:pw@r:6379/0") == "redis://:***@r:6379/0"
    assert "pw" not in mask_url("postgresql://db/indici?user=ops&password=pw")
    assert mask_url("postgresql://db/indici") == "postgresql://db/indici"


@pytest.mark.parametrize("field, url, setting", [
    ("DATABASE_URL", "mysql://u:pw@h/db", "DATABASE_URL"),
    ("DATABASE_URL", "indici", "DATABASE_URL"),
    ("CELERY_BROKER_URL", "amqp://guest:pw@rabbit//", "CELERY_BROKER_URL"),
    ("S3_ENDPOINT_URL", "ftp://minio:9000", "S3_ENDPOINT_URL"),
])
def test_wrong_schemes_name_the_setting_not_the_value(field, url, setting):
    with pytest.raises(ConfigurationError) as raised:
        check_settings(Settings(**{field: url}))
    assert setting in str(raised.value) and "pw" not in str(raised.value)


def test_good_settings_pass():
    check_settings(Settings(DATABASE_URL="postgresql+psycopg://u:p@h:5432/db", CELERY_BROKER_URL="rediss://h:6380/0",
                            S3_ENDPOINT_URL="https://minio.local:9000",
                            NOTIFY_URLS="json://h/x, mailto://u:p@example.org"))


def test_extract_names_and_tokens_resolve_and_typos_suggest():
    assert resolve_extracts(["patients", "Appointments", "Patients"]) == ("Patients", "Appointments")
    with pytest.raises(UsageError, match="did you mean Patients"):
        resolve_extracts(["Patinets"])
    with pytest.raises(UsageError, match="unknown extract 'Foo'"):
        resolve_extracts(["Foo"])


def test_the_nhi_key_is_needed_only_when_nhi_extracts_can_be_loaded():
    with pytest.raises(ConfigurationError, match="NHI_HMAC_KEY is not set.*Patients"):
        check_nhi_key(Settings(NHI_HMAC_KEY=None), [])
    with pytest.raises(ConfigurationError, match="NextOfKin"):
        check_nhi_key(Settings(NHI_HMAC_KEY=None), ["NextOfKin", "Vaccine"])
    check_nhi_key(Settings(NHI_HMAC_KEY=None), ["Vaccine", "Appointments"])
    check_nhi_key(Settings(NHI_HMAC_KEY="k" * 32), [])


def test_s3_errors_are_explained_with_exit_codes():
    settings = Settings(S3_BUCKET="b", S3_ENDPOINT_URL="http://127.0.0.1:1")
    unreachable = explain(botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), settings)
    assert unreachable.code == 1 and "cannot reach S3 at http://127.0.0.1:1" in unreachable.message
    missing = explain(botocore.exceptions.ClientError({"Error": {"Code": "404"}}, "HeadBucket"), settings)
    assert missing.code == 2 and "S3 bucket 'b' does not exist" in missing.message
    denied = explain(botocore.exceptions.ClientError({"Error": {"Code": "403"}}, "HeadBucket"), settings)
    assert denied.code == 2 and "AWS_SECRET_ACCESS_KEY" in denied.message
    assert explain(botocore.exceptions.NoCredentialsError(), settings).code == 2
    assert explain(RuntimeError("something else"), settings) is None


def test_a_settings_validation_error_names_the_variable_without_its_value():
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as raised:
        Settings(KNOWN_PER_ORG_IDS="not-json-secret")
    explained = explain(raised.value)
    assert explained.code == 2 and "KNOWN_PER_ORG_IDS" in explained.message
    assert "not-json-secret" not in explained.message
