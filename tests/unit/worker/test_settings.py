"""Settings validation of secrets: key length, malformed URLs, `<NAME>_FILE`, no value in any error."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from worker.cli import configuration_message, main
from worker.settings import Settings, get_settings

GOOD_KEY = "test-nhi-hmac-key-of-at-least-32-bytes"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    for name in ("NHI_HMAC_KEY", "NHI_HMAC_KEY_PREVIOUS", "DATABASE_URL", "MIGRATION_DATABASE_URL",
                 "NHI_HMAC_KEY_FILE", "DATABASE_URL_FILE", "CELERY_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("name", ["NHI_HMAC_KEY", "NHI_HMAC_KEY_PREVIOUS"])
@pytest.mark.parametrize("key", ["short-Q7", "x" * 31, "ключ" * 3])  # the last: 12 characters, 24 bytes
def test_short_keys_are_refused_naming_the_setting_not_the_value(name, key):
    with pytest.raises(ValidationError) as caught:
        Settings(**{name: key})
    message = configuration_message(caught.value)
    assert name in message and "32 bytes" in message
    assert key not in str(caught.value) and key not in message


def test_keys_of_32_bytes_or_more_are_accepted_and_empty_means_unset():
    assert Settings(NHI_HMAC_KEY="x" * 32).nhi_hmac_key.get_secret_value() == "x" * 32
    assert Settings(NHI_HMAC_KEY="ключ" * 4).nhi_hmac_key is not None  # 16 characters, 32 bytes
    assert Settings(NHI_HMAC_KEY="").nhi_hmac_key is None
    assert Settings(NHI_HMAC_KEY_PREVIOUS="").nhi_hmac_key_previous is None


@pytest.mark.parametrize("setting", ["DATABASE_URL", "MIGRATION_DATABASE_URL", "CELERY_BROKER_URL"])
def test_a_malformed_password_escape_is_refused_without_echoing_it(setting):
    url = "postgresql://svc:Pa%zzW0rd-very-secret@db:5432/indici"
    with pytest.raises(ValidationError) as caught:
        Settings(**{setting: url})
    message = configuration_message(caught.value)
    assert setting in message and "percent" in message
    assert "Pa%zzW0rd" not in str(caught.value) and "very-secret" not in message


def test_cli_reports_a_bad_key_in_one_line_without_the_value(monkeypatch, capsys):
    monkeypatch.setenv("NHI_HMAC_KEY", "short-but-secret")
    get_settings.cache_clear()
    try:
        assert main(["health"]) == 2
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert err.startswith("configuration error: NHI_HMAC_KEY") and "short-but-secret" not in err
    assert "Traceback" not in err


def test_migration_url_defaults_to_database_url():
    s = Settings(DATABASE_URL="postgresql://svc@db/indici")
    assert s.migration_url().get_secret_value() == "postgresql://svc@db/indici"
    s = Settings(DATABASE_URL="postgresql://svc@db/indici", MIGRATION_DATABASE_URL="postgresql://owner@db/indici")
    assert s.migration_url().get_secret_value() == "postgresql://owner@db/indici"


def test_secrets_can_come_from_files(monkeypatch, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(GOOD_KEY + "\n")
    url_file = tmp_path / "url"
    url_file.write_text("postgresql://svc:from-a-file@db/indici")
    monkeypatch.setenv("NHI_HMAC_KEY_FILE", str(key_file))
    monkeypatch.setenv("DATABASE_URL_FILE", str(url_file))
    s = Settings()
    assert s.nhi_hmac_key.get_secret_value() == GOOD_KEY  # one trailing newline dropped
    assert s.database_url.get_secret_value() == "postgresql://svc:from-a-file@db/indici"


def test_a_secret_given_twice_is_an_error(monkeypatch, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(GOOD_KEY)
    monkeypatch.setenv("NHI_HMAC_KEY_FILE", str(key_file))
    monkeypatch.setenv("NHI_HMAC_KEY", GOOD_KEY)
    with pytest.raises(SettingsError, match="NHI_HMAC_KEY or NHI_HMAC_KEY_FILE"):
        Settings()


def test_an_unreadable_secret_file_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("NHI_HMAC_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match="NHI_HMAC_KEY_FILE"):
        Settings()


def test_file_variables_exist_only_for_secrets(monkeypatch, tmp_path):
    bucket = tmp_path / "bucket"
    bucket.write_text("not-read")
    monkeypatch.setenv("S3_BUCKET_FILE", str(bucket))
    assert Settings().s3_bucket == "poutiri-datacraft-data"
