"""Integration fixtures: a fresh migrated Postgres database, roles, a moto S3 server and Redis.

Everything is created per test session with unique names and removed afterwards, so no run depends on
what an earlier run left behind.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import psycopg
import pytest
import redis
from psycopg import sql

from worker.settings import Settings

ADMIN_URL = os.environ.get("TEST_ADMIN_DATABASE_URL", "postgresql://127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")


@dataclass(frozen=True)
class TestDatabase:
    url: str
    name: str
    role_prefix: str

    def settings(self, **overrides) -> Settings:
        values = {"DATABASE_URL": self.url, "DB_ROLE_PREFIX": self.role_prefix, **overrides}
        return Settings(**values)


def _admin(sql_text, *params) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql_text, params or None)


def create_database(tag: str) -> TestDatabase:
    suffix = uuid.uuid4().hex[:10]
    name = f"indici_{tag}_{suffix}"
    _admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base = ADMIN_URL.rsplit("/", 1)[0]
    return TestDatabase(url=f"{base}/{name}", name=name, role_prefix=f"t{suffix}_")


def drop_database(db: TestDatabase) -> None:
    """The database, then every role with the session's prefix: the group roles of worker/io/roles.py
    and the logins tests created (named with the prefix too, e.g. by grant-login)."""
    from worker.io.roles import roles

    _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db.name)))
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        group = set(roles(db.settings()).all())
        prefixed = {r[0] for r in conn.execute(
            "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (db.role_prefix,))}
        # Logins first: a group role cannot be dropped while another database still depends on it.
        for role in sorted(prefixed - group) + [r for r in roles(db.settings()).all() if r in prefixed]:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def migrate(db: TestDatabase, revision: str = "head") -> None:
    from worker.pipeline.migrate import upgrade

    upgrade(db.settings(), revision)


@pytest.fixture(scope="session")
def migrated_db(monkeypatch_session) -> Iterator[TestDatabase]:
    """One freshly created and migrated database for the session."""
    db = create_database("s")
    monkeypatch_session.setenv("DATABASE_URL", db.url)
    monkeypatch_session.setenv("DB_ROLE_PREFIX", db.role_prefix)
    from worker.settings import get_settings

    get_settings.cache_clear()
    try:
        migrate(db)
        yield db
    finally:
        drop_database(db)
        get_settings.cache_clear()


@pytest.fixture()
def empty_db() -> Iterator[TestDatabase]:
    """A brand-new, unmigrated database for tests of the migrations themselves."""
    db = create_database("e")
    try:
        yield db
    finally:
        drop_database(db)


@pytest.fixture()
def db_conn(migrated_db: TestDatabase) -> Iterator[psycopg.Connection]:
    with psycopg.connect(migrated_db.url) as conn:
        yield conn


@pytest.fixture(scope="session")
def monkeypatch_session() -> Iterator[pytest.MonkeyPatch]:
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="ap-southeast-2",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


@pytest.fixture(scope="session")
def s3_server(monkeypatch_session) -> Iterator[S3Server]:
    """moto in server mode (a real HTTP endpoint other processes can reach)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for var, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "ap-southeast-2",
        "S3_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch_session.setenv(var, value)
    try:
        yield S3Server(endpoint)
    finally:
        server.stop()


@pytest.fixture()
def s3_bucket(s3_server: S3Server) -> str:
    """A new versioned bucket per test."""
    name = f"indici-test-{uuid.uuid4().hex[:12]}"
    client = s3_server.client()
    client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "ap-southeast-2"})
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


# Redis database indexes test sessions may lease (0-5 are left to developers' workers and the demo).
_LEASABLE_REDIS_DBS = range(6, 16)
_LEASE_SECONDS = 3 * 60 * 60


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database index of its own for the session, flushed before and after.

    Several test sessions may run at once on one machine (and one Redis): each leases a free database
    index with SET NX in database 0, so no two sessions' workers ever consume each other's messages."""
    lessor = redis.Redis.from_url(f"{REDIS_URL}/0")
    lessor.ping()
    token = uuid.uuid4().hex
    index = next((i for i in _LEASABLE_REDIS_DBS
                  if lessor.set(f"indici-test-lease:{i}", token, nx=True, ex=_LEASE_SECONDS)), None)
    if index is None:
        pytest.fail("no free Redis database for this test session (indexes 6-15 are all leased)")
    url = f"{REDIS_URL}/{index}"
    redis.Redis.from_url(url).flushdb()
    try:
        yield url
    finally:
        redis.Redis.from_url(url).flushdb()
        if lessor.get(f"indici-test-lease:{index}") == token.encode():
            lessor.delete(f"indici-test-lease:{index}")


@pytest.fixture()
def pipeline_settings(migrated_db, s3_server, s3_bucket):
    """Settings pointing at the session database, the moto server and a new versioned bucket, with
    every data table emptied first (the database is shared by the session's tests)."""
    from tests.integration.worker.pipeline.helpers import reset_data

    reset_data(migrated_db.url)
    return migrated_db.settings(
        S3_BUCKET=s3_bucket,
        S3_ENDPOINT_URL=s3_server.endpoint_url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        NHI_HMAC_KEY="test-nhi-hmac-key-of-at-least-32-bytes",
    )
