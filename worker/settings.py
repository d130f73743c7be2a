"""The one settings class. Every value comes from the environment (or a `.env` file in development)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration of indici-ingest; field names match the environment variables of PRODUCT.md."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    database_url: SecretStr = Field(
        default=SecretStr("postgresql://127.0.0.1:5432/indici"),
        validation_alias="DATABASE_URL",
    )
    """Postgres URL (libpq form, `postgresql://user:pass@host:port/db`). Secret: it may hold a password."""

    celery_broker_url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"), validation_alias="CELERY_BROKER_URL"
    )
    """Celery broker (Redis). Secret: it may hold a password."""

    celery_result_backend: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/1"), validation_alias="CELERY_RESULT_BACKEND"
    )
    """Celery result backend (Redis). Secret: it may hold a password."""

    s3_bucket: str = Field(default="poutiri-datacraft-data", validation_alias="S3_BUCKET")
    """The bucket the provider drops extracts into (versioning on)."""

    s3_prefix: str = Field(default="", validation_alias="S3_PREFIX")
    """Only keys under this prefix are considered by discovery."""

    aws_region: str = Field(default="ap-southeast-2", validation_alias="AWS_REGION")
    """AWS region of the bucket."""

    s3_endpoint_url: str | None = Field(default=None, validation_alias="S3_ENDPOINT_URL")
    """Unset in production; set for moto or MinIO (e.g. http://127.0.0.1:5000)."""

    aws_access_key_id: SecretStr | None = Field(default=None, validation_alias="AWS_ACCESS_KEY_ID")
    """Standard AWS credential; unset to use the default credential chain (instance role)."""

    aws_secret_access_key: SecretStr | None = Field(
        default=None, validation_alias="AWS_SECRET_ACCESS_KEY"
    )
    """Standard AWS credential; unset to use the default credential chain (instance role)."""

    aws_session_token: SecretStr | None = Field(default=None, validation_alias="AWS_SESSION_TOKEN")
    """Standard AWS credential for temporary credentials."""

    nhi_hmac_key: SecretStr | None = Field(default=None, validation_alias="NHI_HMAC_KEY")
    """Secret key of the HMAC-SHA256 that turns an NHI into core's nhi_hash. Required whenever patients
    are merged; kept outside the database so the hashes cannot be reversed by trying every NHI."""

    known_per_org_ids: list[int] = Field(default_factory=list, validation_alias="KNOWN_PER_ORG_IDS")
    """PerOrgIDs used to split the compact file-name form (`685146545Appointments...`) into
    PerOrgID and PracticeID; JSON list, e.g. `[685146]`. Without it the file's own columns decide."""

    db_role_prefix: str = Field(default="", validation_alias="DB_ROLE_PREFIX")
    """Prefix of the database roles the migrations create (`<prefix>indici_owner`, `<prefix>etl_writer`,
    `<prefix>app_reader`). Roles are cluster-wide: tests use a per-run prefix so runs never share them."""

    notify_urls: SecretStr = Field(default=SecretStr(""), validation_alias="NOTIFY_URLS")
    """Comma-separated apprise URLs (https://github.com/caronc/apprise/wiki) that receive every run's
    summary, e.g. `mailtos://user:pass@host?to=ops@example.org,json://hooks.example.org/indici`; empty
    means no notifications. Secret: the URLs may hold tokens or passwords."""

    s3_read_chunk_bytes: int = Field(default=4 * 1024 * 1024, validation_alias="S3_READ_CHUNK_BYTES")
    """Bytes read from an S3 object per chunk while landing; bounds the landing's memory."""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return Settings()
