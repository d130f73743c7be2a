"""The one settings class. Every value comes from the environment (or a `.env` file in development).

Secrets: every `SecretStr` setting may instead be given as a file, `<NAME>_FILE=/path` (the Docker
secrets convention; docker-compose.yml uses it), never both. Validation errors never show the input
(`hide_input_in_errors`), and each instance registers its secret values with worker.redact so that
logs and error output mask them.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from worker import redact

# An HMAC-SHA256 key shorter than the hash's output (32 bytes) weakens it; such keys are refused.
MIN_NHI_KEY_BYTES = 32
FILE_SUFFIX = "_FILE"


def _is_secret(field: FieldInfo) -> bool:
    return "SecretStr" in str(field.annotation)


class SecretFileSource(PydanticBaseSettingsSource):
    """`<NAME>_FILE` for every secret setting: the value is the file's content (one trailing newline
    dropped). Giving both `<NAME>` and `<NAME>_FILE` is an error, not a silent choice."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ does the work

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            alias = field.validation_alias if isinstance(field.validation_alias, str) else name.upper()
            path = os.environ.get(alias + FILE_SUFFIX)
            if not path or not _is_secret(field):
                continue
            if os.environ.get(alias):
                raise SettingsError(f"set either {alias} or {alias}{FILE_SUFFIX}, not both")
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise SettingsError(f"{alias}{FILE_SUFFIX}: cannot read {path} ({exc.strerror})") from None
            values[alias] = text[:-1] if text.endswith("\n") else text
        return values


class Settings(BaseSettings):
    """Configuration of indici-ingest; field names match the environment variables of PRODUCT.md."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", hide_input_in_errors=True
    )

    database_url: SecretStr = Field(
        default=SecretStr("postgresql://127.0.0.1:5432/indici"),
        validation_alias="DATABASE_URL",
    )
    """Postgres URL (libpq form, `postgresql://user:pass@host:port/db`) of the service: in production a
    login that holds only `etl_writer` (`indici-ingest grant-login`). Secret: it may hold a password."""

    migration_database_url: SecretStr | None = Field(default=None, validation_alias="MIGRATION_DATABASE_URL")
    """Postgres URL of the login that runs `migrate`, `grant-login` and `bind-org`: the database's owner
    with CREATEROLE (no superuser needed). Unset: DATABASE_URL is used. Secret: it may hold a password."""

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
    """Secret key of the HMAC-SHA256 that turns an NHI into core's nhi_hash: at least 32 bytes (UTF-8),
    e.g. `python -c "import secrets; print(secrets.token_urlsafe(32))"`. Required whenever patients are
    merged; kept outside the database (only a fingerprint is recorded, in etl.nhi_key_versions) so the
    hashes cannot be reversed by trying every NHI. To rotate it, see NHI_HMAC_KEY_PREVIOUS."""

    nhi_hmac_key_previous: SecretStr | None = Field(default=None, validation_alias="NHI_HMAC_KEY_PREVIOUS")
    """The key being rotated out, set only during a rotation: deploy NHI_HMAC_KEY=<new> and
    NHI_HMAC_KEY_PREVIOUS=<old> everywhere (merges keep using whichever of the two core is hashed with),
    run `indici-ingest rekey` (re-hashes core under the new key in one transaction), then remove this
    setting. At least 32 bytes, like NHI_HMAC_KEY."""

    flower_basic_auth: SecretStr | None = Field(default=None, validation_alias="FLOWER_BASIC_AUTH")
    """`user:password` (comma-separated for several) that Flower's UI requires (ops/flowerconfig.py).
    Unset: Flower refuses to start."""

    known_per_org_ids: list[int] = Field(default_factory=list, validation_alias="KNOWN_PER_ORG_IDS")
    """PerOrgIDs used to split the compact file-name form (`685146545Appointments...`) into
    PerOrgID and PracticeID; JSON list, e.g. `[685146]`. Without it the file's own columns decide."""

    db_role_prefix: str = Field(default="", validation_alias="DB_ROLE_PREFIX")
    """Prefix of the database roles the migrations create (`<prefix>indici_owner`, `<prefix>etl_writer`,
    `<prefix>app_reader`, `<prefix>identified_reader`, `<prefix>engineer`; worker/io/roles.py). Roles are
    cluster-wide: tests use a per-run prefix so runs never share them."""

    notify_urls: SecretStr = Field(default=SecretStr(""), validation_alias="NOTIFY_URLS")
    """Comma-separated apprise URLs (https://github.com/caronc/apprise/wiki) that receive every run's
    summary, e.g. `mailtos://user:pass@host?to=ops@example.org,json://hooks.example.org/indici`; empty
    means no notifications. Secret: the URLs may hold tokens or passwords."""

    s3_read_chunk_bytes: int = Field(default=1024 * 1024, validation_alias="S3_READ_CHUNK_BYTES")
    """Bytes read from an S3 object per chunk while landing; bounds the landing's memory. 1 MiB: larger
    reads cost botocore and http.client more copying (a 1.7 GB version spooled from the benchmark's moto
    server in 3.2-5.4 s with 1 MiB reads, 5.0-6.1 s with 4 MiB, over three runs; a bare GET 2.1-2.9 s)."""

    # -- run lifecycle and Celery delivery (worker/pipeline/lifecycle.py, worker/app.py) ----------------
    task_soft_time_limit: int = Field(default=2 * 60 * 60, validation_alias="TASK_SOFT_TIME_LIMIT")
    """Seconds after which a task is asked to stop (SoftTimeLimitExceeded: its transaction rolls back and
    the file is recorded as failed, retryable). Longer than landing the largest extract or a full merge."""

    task_time_limit: int = Field(default=2 * 60 * 60 + 10 * 60, validation_alias="TASK_TIME_LIMIT")
    """Seconds after which the worker process running a task is killed (the hard limit). The broker's
    visibility timeout (worker/app.py) and a file's lease are derived from it, so a message is never
    redelivered, nor a file re-enqueued, while its task may still be running."""

    worker_max_memory_mb: int = Field(default=350, ge=0, validation_alias="WORKER_MAX_MEMORY_MB")
    """Peak resident memory (MB) past which a worker pool process is replaced by a fresh one once its
    task has finished (Celery's worker_max_memory_per_child, prefork pool; the task is never cut short).
    A pool process peaks at about 250-290 MB whatever the file's size, and its peak creeps up by 15-25 MB
    over weeks of runs (allocators keeping freed pages; docs/ARCHITECTURE.md, staging, "Memory"): this
    bounds that and any spike. 0: never replaced for its memory."""

    run_lease_seconds: int = Field(default=15 * 60, validation_alias="RUN_LEASE_SECONDS")
    """A run is alive while its lease (etl.load_runs.lease_expires_at) holds; every step of the run
    renews it. A running run whose lease expired has lost its driver (an inline process died, a chord
    message was lost): the reconciler finishes or fails it, and a later run adopts its files."""

    bulk_index_rebuild_rows: int = Field(default=100_000, validation_alias="BULK_INDEX_REBUILD_ROWS")
    """A fact merge of at least this many staged rows into a fact holding fewer rows than the batch (a
    first night, a backfill) drops the fact's reference-key indexes and builds them again after the
    upsert (one sort instead of a random insertion per row and index: 1M Appointments 13 s -> 3 s).
    The fact is locked against readers until the merge commits. 0 turns it off."""

    stage_while_landing: bool = Field(default=True, validation_alias="STAGE_WHILE_LANDING")
    """Type a file in the pass that lands it: the blocks raw landing COPYs are typed while Postgres
    writes them, and loaded into stg in the same transaction (one task, the file pending -> staged).
    A file the pass cannot stage (a repeated natural key, an error) is committed as landed and staged
    from raw by the stage step, as when this is off."""

    typing_during_raw_copy: bool = Field(default=True, validation_alias="TYPING_DURING_RAW_COPY")
    """Staging while landing: type the file's blocks on a thread of their own while the raw COPY runs,
    keeping their stg COPY bytes in a local spool (as large as the file's stg rows), and send them into
    stg once raw is written, while the rest is typed (worker/pipeline/typing_engine/tee.py). During the
    raw COPY the Postgres backend is one core's work and the decoding less than the other's. stg gets
    the same rows in the same order either way; false types the whole file after the raw COPY."""

    typing_threads: int = Field(default=2, ge=1, le=16, validation_alias="TYPING_THREADS")
    """Blocks of a file the typing engine parses and types at once, each on a thread of the worker
    process (worker/pipeline/typing_engine/stage.py typed_blocks); 1 types on the task's own thread.
    Arrow's parse and compute kernels run without the GIL, so a second thread types while the first
    encodes and sends. Blocks get smaller so that the text held at once stays about 8 MiB (2 threads:
    2.67 MiB blocks). On this two-core machine 2 staged 100k Appointments 10-15% faster than 1, with the
    worker process 30-40 MB larger (docs/ARCHITECTURE.md, staging, "Typing threads"); more threads than
    the worker's cores, with the Postgres backend's COPY counted, only add memory."""

    lock_timeout_seconds: float = Field(default=10 * 60, validation_alias="LOCK_TIMEOUT_SECONDS")
    """Longest wait for a file's or the merge's advisory lock; past it the step fails (retryable) with
    a message naming the backend holding the lock (pg_stat_activity.application_name: run and file)."""

    @property
    def file_lease_seconds(self) -> int:
        """A worker's hold on a file: the hard time limit plus 30 s (the task is dead by then)."""
        return self.task_time_limit + 30

    @property
    def visibility_timeout(self) -> int:
        """Redis redelivers an unacknowledged message after this long: above the hard time limit plus
        the longest retry countdown (worker/tasks.py), so a message is never redelivered while its task
        can still be running."""
        return self.task_time_limit + 600 + 5 * 60
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(default="INFO",
                                                                                validation_alias="LOG_LEVEL")
    """Level of the JSON log lines of the Celery worker, beat and Flower when their command line gives no
    `--loglevel` (Celery's own default, WARNING, would hide every line of a successful night). The CLI
    takes `--log-level` instead."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, SecretFileSource(settings_cls), dotenv_settings, file_secret_settings

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("nhi_hmac_key", "nhi_hmac_key_previous", mode="before")
    @classmethod
    def _empty_key_is_unset(cls, value: Any) -> Any:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        return None if isinstance(value, str) and not value else value

    @field_validator("nhi_hmac_key", "nhi_hmac_key_previous")
    @classmethod
    def _key_is_long_enough(cls, value: SecretStr | None, info: Any) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode("utf-8")) < MIN_NHI_KEY_BYTES:
            name = "NHI_HMAC_KEY_PREVIOUS" if info.field_name == "nhi_hmac_key_previous" else "NHI_HMAC_KEY"
            raise ValueError(f"{name} must be at least {MIN_NHI_KEY_BYTES} bytes (UTF-8); "
                             "generate one with: python -c \"import secrets; print(secrets.token_urlsafe(32))\"")
        return value

    @field_validator("database_url", "migration_database_url", "celery_broker_url", "celery_result_backend")
    @classmethod
    def _url_is_well_formed(cls, value: SecretStr | None, info: Any) -> SecretStr | None:
        # libpq and redis-py quote the offending part of a malformed URL in their errors (a password
        # with a stray % would be printed): refuse it here, naming the setting but not the value.
        if value is not None and redact.malformed_percent_escape(value.get_secret_value()):
            name = str(info.field_name).upper()
            raise ValueError(f"{name} has a malformed percent-escape (a % not followed by two hex digits); "
                             "percent-encode the password (% is %25)")
        return value

    def model_post_init(self, context: Any, /) -> None:
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                secret = value.get_secret_value()
                if name.endswith("_url"):
                    redact.register_url(secret)
                else:
                    redact.register(secret)

    def migration_url(self) -> SecretStr:
        """MIGRATION_DATABASE_URL, else DATABASE_URL."""
        return self.migration_database_url or self.database_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return Settings()
