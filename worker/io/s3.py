"""S3 access: a client from settings, version listing, and streaming reads of one object version."""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

import boto3
from botocore.config import Config

from worker.settings import Settings, get_settings


@dataclass(frozen=True)
class ObjectVersion:
    """One version of one S3 object, as listed (before its bytes are read)."""

    bucket: str
    key: str
    version_id: str
    etag: str
    size: int
    last_modified: datetime
    is_latest: bool


def make_client(settings: Settings | None = None, config: Config | None = None):
    """An S3 client from settings; `config` replaces the default retries and timeouts (preflight checks
    use one attempt and short timeouts)."""
    settings = settings or get_settings()
    secret = settings.aws_secret_access_key
    token = settings.aws_session_token
    return boto3.client(
        "s3",
        region_name=settings.aws_region,
        endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=settings.aws_access_key_id.get_secret_value() if settings.aws_access_key_id else None,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        aws_session_token=token.get_secret_value() if token else None,
        config=config or Config(retries={"max_attempts": 8, "mode": "adaptive"}, connect_timeout=10, read_timeout=120),
    )


def iter_versions(client, bucket: str, prefix: str = "") -> Iterator[ObjectVersion]:
    """Every object version under the prefix (delete markers are not objects and are left out).

    An unversioned bucket reports the version id "null"; it is kept as that string so the ledger's
    (bucket, key, version) identity still holds.
    """
    paginator = client.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for v in page.get("Versions", []):
            yield ObjectVersion(
                bucket=bucket,
                key=v["Key"],
                version_id=v.get("VersionId") or "null",
                etag=v.get("ETag", "").strip('"'),
                size=int(v.get("Size", 0)),
                last_modified=v["LastModified"],
                is_latest=bool(v.get("IsLatest", False)),
            )


def iter_version_chunks(client, bucket: str, key: str, version_id: str, chunk_bytes: int) -> Iterator[bytes]:
    """The bytes of one object version, streamed in chunks (never the whole object in memory)."""
    extra = {} if version_id == "null" else {"VersionId": version_id}
    body = client.get_object(Bucket=bucket, Key=key, **extra)["Body"]
    try:
        yield from body.iter_chunks(chunk_size=chunk_bytes)
    finally:
        body.close()


def spool_version(
    client, bucket: str, key: str, version_id: str, dest: BinaryIO, chunk_bytes: int
) -> tuple[str, int]:
    """Copy one object version to a local file, hashing it in the same pass. Returns (sha256, size).

    Spooling lets the landing know the file's hash (lineage of every raw row, duplicate detection)
    before it writes a single row, while holding only a few chunks in memory. The hash runs in a second
    thread (hashlib releases the GIL on large buffers), so hashing overlaps the download.
    """
    digest = hashlib.sha256()
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)

    def hash_chunks() -> None:
        while (chunk := chunks.get()) is not None:
            digest.update(chunk)

    hasher = threading.Thread(target=hash_chunks, name="spool-sha256", daemon=True)
    hasher.start()
    size = 0
    try:
        for chunk in iter_version_chunks(client, bucket, key, version_id, chunk_bytes):
            chunks.put(chunk)
            dest.write(chunk)
            size += len(chunk)
    finally:
        chunks.put(None)
        hasher.join()
    dest.flush()
    dest.seek(0)
    return digest.hexdigest(), size
