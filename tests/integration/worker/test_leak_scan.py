"""The leak scan: after full Celery runs (a real worker) over generated data with NHIs, names and dates
of birth, none of them, no password and no NHI key is found in core or etl (rejects excepted: they
are the engineer's), in what app_reader sees, in any log line, in any Redis key or value, or in any
command's output.

The stack is the production shape: the worker logs in as a login holding only etl_writer (password in
DATABASE_URL), Redis requires a password (a redis-server started for this module), readers log in
with their own passwords and are bound to an organisation. Two organisations, three practices, a full
batch and a delta with planted faults, then a key rotation.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg import sql

from contracts.model import PiiClass
from contracts.registry import get as get_spec
from tests.conftest import REPO_ROOT
from tests.integration.worker.celery_worker import celery_worker
from tests.integration.worker.io.helpers import login_url
from tests.integration.worker.pipeline.helpers import Receiver, put_file, reset_data
from worker.net import free_port
from worker.settings import Settings
from worker.synth import build_series

pytestmark = pytest.mark.integration

KEY = "test-nhi-hmac-key-of-at-least-32-bytes"
NEW_KEY = "rotated-test-nhi-hmac-key-of-32-bytes-x"
PRACTICES = [(685146, 535), (685146, 536), (700001, 100)]
EXTRACTS = ["Patients", "NextOfKin", "Providers", "PracticeInfo", "Appointments", "Allergies", "Inbox"]
FAULTS = {"bad_timestamp": 1, "missing_required": 1, "nasty_text": 2, "wrong_field_count": 1}
DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")


@dataclass
class Needles:
    """What must never be found, by kind (the values themselves only appear in a failing assertion)."""

    nhis: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)  # patients' "First FAMILY" as facts display them
    dobs: set[str] = field(default_factory=set)
    secrets: set[str] = field(default_factory=set)  # passwords and NHI keys

    def personal(self) -> dict[str, set[str]]:
        return {"NHI": self.nhis, "patient name": self.names, "date of birth": self.dobs}

    def every(self) -> dict[str, set[str]]:
        return {**self.personal(), "secret": self.secrets}


def _needles(batches) -> Needles:
    found = Needles()
    other_dates: set[str] = set()
    provider_names: set[str] = set()
    for batch in batches:
        for f in batch.files:
            spec = get_spec(f.extract)
            index = {c.column: i for i, c in enumerate(spec.columns)}
            for row in f.rows:
                if len(row) != len(spec.columns):
                    continue  # a planted wrong_field_count row: its file fails whole
                for col in spec.columns:
                    value = row[index[col.column]].strip()
                    if col.pii is PiiClass.NHI and value:
                        found.nhis.add(value.upper())
                    elif col.column != "dob":
                        other_dates.update(DATE.findall(value))
                if f.extract == "Patients":
                    first, family = row[index["first_name"]].strip(), row[index["family_name"]].strip()
                    if first and family:
                        found.names.add(f"{first} {family}")
                    found.dobs.update(DATE.findall(row[index["dob"]]))
                if f.extract == "Providers":
                    provider_names.add(f"{row[index['first_name']].strip()} {row[index['family_name']].strip()}")
        other_dates.update(d.strftime("%Y-%m-%d") for d in (batch.date_from, batch.date_to, batch.date_extracted))
    # A date of birth that is also another date of the data (or a provider sharing a patient's name)
    # cannot be told apart from it; every other one must never be found.
    found.dobs -= other_dates
    found.names -= provider_names
    assert len(found.nhis) > 20 and len(found.names) > 20 and len(found.dobs) > 20
    return found


@dataclass
class Stack:
    db: object
    env: dict[str, str]
    needles: Needles
    redis_url: str
    redis_password: str
    analyst_url: str
    worker_log: Path
    receiver: Receiver  # NOTIFY_URLS points here: every run summary the workers sent
    outputs: list[tuple[str, str]] = field(default_factory=list)  # (command, stdout + stderr)

    def cli(self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 900) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "worker.cli", *args], env={**self.env, **(env or {})},
                              cwd=REPO_ROOT, input=stdin, capture_output=True, text=True, timeout=timeout)
        self.outputs.append((args[0], done.stdout + done.stderr))
        return done


@pytest.fixture(scope="module")
def stack(migrated_db, s3_server, tmp_path_factory) -> Iterator[Stack]:
    reset_data(migrated_db.url)
    tmp = tmp_path_factory.mktemp("leaks")
    redis_password = secrets.token_urlsafe(18)
    port = free_port()
    redis_proc = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--requirepass", redis_password,
         "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    receiver = Receiver().__enter__()
    try:
        client = redis.Redis(host="127.0.0.1", port=port, password=redis_password)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        with pytest.raises(redis.AuthenticationError):  # it really requires the password
            redis.Redis(host="127.0.0.1", port=port).ping()
        redis_url = f"redis://:{redis_password}@127.0.0.1:{port}"

        bucket = f"indici-leaks-{uuid.uuid4().hex[:10]}"
        s3 = s3_server.client()
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "ap-southeast-2"})
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        batches = build_series(seed=5, patients=12, practices=PRACTICES, deltas=1, extracts=EXTRACTS, faults=FAULTS)

        service_password, analyst_password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        service, analyst = migrated_db.role_prefix + "leak_service", migrated_db.role_prefix + "leak_analyst"
        admin_env = {**os.environ, "DATABASE_URL": migrated_db.url, "MIGRATION_DATABASE_URL": migrated_db.url,
                     "DB_ROLE_PREFIX": migrated_db.role_prefix}
        stack = Stack(
            db=migrated_db,
            env={**admin_env,
                 "DATABASE_URL": login_url(migrated_db.url, service, service_password),
                 "S3_BUCKET": bucket, "S3_ENDPOINT_URL": s3_server.endpoint_url,
                 "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "ap-southeast-2", "NHI_HMAC_KEY": KEY,
                 "CELERY_BROKER_URL": f"{redis_url}/0", "CELERY_RESULT_BACKEND": f"{redis_url}/1",
                 "NOTIFY_URLS": receiver.url},
            needles=_needles(batches),
            redis_url=redis_url, redis_password=redis_password,
            analyst_url=login_url(migrated_db.url, analyst, analyst_password),
            worker_log=tmp / "worker.log",
            receiver=receiver,
        )
        stack.needles.secrets |= {KEY, NEW_KEY, KEY.encode().hex(), NEW_KEY.encode().hex(),
                                  service_password, analyst_password, redis_password}
        for login, role, password in ((service, "etl_writer", service_password),
                                      (analyst, "app_reader", analyst_password)):
            done = stack.cli("grant-login", login, "--role", role, stdin=password + "\n")
            assert done.returncode == 0, done.stderr
        assert stack.cli("bind-org", analyst, "685146").returncode == 0

        # Started and awaited until it answers: `run --wait` fails at once when no worker consumes the
        # queues yet (orchestration.missing_consumers), which a slow start under load once made it do.
        from worker.app import make_app

        celery_client = make_app(Settings(CELERY_BROKER_URL=stack.env["CELERY_BROKER_URL"],
                                          CELERY_RESULT_BACKEND=stack.env["CELERY_RESULT_BACKEND"]))
        worker = ExitStack()
        worker.callback(celery_client.close)
        worker.enter_context(celery_worker(celery_client, stack.env, stack.worker_log,
                                           f"leaks-{uuid.uuid4().hex[:8]}@%h", start_seconds=60))
        for batch in batches:
            for f in batch.files:
                put_file(s3, bucket, f.name, f.data)
            done = stack.cli("run", "--wait")
            assert done.returncode in (0, 1), done.stderr  # partial: the planted broken files
            out = done.stdout
            summary = json.loads(out if out.startswith("{") else out[out.index("\n{") + 1:])
            assert summary["status"] in ("succeeded", "partial"), summary
        with psycopg.connect(migrated_db.url) as conn:
            assert conn.execute("SELECT count(*) FROM core.dim_patient WHERE nhi_hash IS NOT NULL").fetchone()[0] > 20
            patient = conn.execute("SELECT patient_id, practice_id, per_org_id FROM core.dim_patient "
                                   "WHERE NOT is_inferred LIMIT 1").fetchone()
        for args in (("health",), ("trace", "dim_patient", *map(str, patient))):
            stack.cli(*args)
        done = stack.cli("rekey", env={"NHI_HMAC_KEY": NEW_KEY, "NHI_HMAC_KEY_PREVIOUS": KEY})
        assert done.returncode == 0, done.stderr
        yield stack
    finally:
        if worker is not None:
            worker.close()
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        receiver.__exit__(None, None, None)


def _find(text: str, needles: dict[str, set[str]]) -> list[str]:
    return [f"{kind} {value!r}" for kind, values in needles.items() for value in values if value in text]


def _table_texts(conn: psycopg.Connection, schema: str, exclude: str | None = None) -> Iterator[tuple[str, str]]:
    tables = conn.execute("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                          "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v') ORDER BY 1", (schema,)).fetchall()
    for (table,) in tables:
        if exclude and table.startswith(exclude):
            continue
        statement = sql.SQL("COPY (SELECT * FROM {}) TO STDOUT").format(sql.Identifier(schema, table))
        with conn.cursor().copy(statement) as copy:
            yield f"{schema}.{table}", b"".join(bytes(chunk) for chunk in copy).decode("utf-8", "replace")


def test_core_holds_no_nhi_and_no_secret(stack):
    needles = {"NHI": stack.needles.nhis, "secret": stack.needles.secrets}
    with psycopg.connect(stack.db.url) as conn:
        found = {t: hits for t, text in _table_texts(conn, "core") if (hits := _find(text, needles))}
    assert not found


def test_etl_holds_no_personal_value_and_no_secret_outside_rejects(stack):
    with psycopg.connect(stack.db.url) as conn:
        texts = dict(_table_texts(conn, "etl", exclude="rejects_"))
    assert "etl.load_run_files" in texts and "etl.nhi_key_versions" in texts
    found = {t: hits for t, text in texts.items() if (hits := _find(text, stack.needles.every()))}
    assert not found


def test_what_an_analyst_sees_holds_no_identifier(stack):
    """app_reader, logged in with its own password, reads the deid views of its organisation."""
    with psycopg.connect(stack.analyst_url) as conn:
        texts = dict(_table_texts(conn, "deid"))
        assert conn.execute("SELECT count(*) FROM deid.dim_patient").fetchone()[0] > 0
    found = {t: hits for t, text in texts.items() if (hits := _find(text, stack.needles.every()))}
    assert not found


def test_no_log_line_holds_a_personal_value_or_a_secret(stack):
    lines = stack.worker_log.read_text(errors="replace").splitlines()
    assert any("file landed" in line for line in lines)  # the worker's own lines are there to scan
    found = [f"worker.log:{n}: {hits}" for n, line in enumerate(lines, 1)
             if (hits := _find(line, stack.needles.every()))]
    assert not found


def test_no_command_output_holds_a_personal_value_or_a_secret(stack):
    commands = {command for command, _ in stack.outputs}
    assert {"grant-login", "bind-org", "run", "health", "trace", "rekey"} <= commands
    found = [f"{command}: {hits}" for command, text in stack.outputs if (hits := _find(text, stack.needles.every()))]
    assert not found


def _redis_texts(url: str) -> Iterator[tuple[str, str]]:
    """Every key and value of a Redis database; kombu's message bodies decoded from base64 too."""
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(count=500):
        kind = client.type(key).decode()
        if kind == "string":
            values = [client.get(key)]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "hash":
            values = [v for pair in client.hgetall(key).items() for v in pair]
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "zset":
            values = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        else:
            values = []
        texts = [key.decode("utf-8", "replace")]
        for value in values:
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            texts.append(text)
            texts.extend(_decoded_bodies(text))
        yield key.decode("utf-8", "replace"), "\n".join(texts)


def _decoded_bodies(text: str) -> list[str]:
    try:
        message = json.loads(text)
    except ValueError:
        return []
    if isinstance(message, list):  # unacked entries: [message, exchange, routing key]
        message = message[0] if message and isinstance(message[0], dict) else {}
    if not isinstance(message, dict) or "body" not in message:
        return []
    if message.get("properties", {}).get("body_encoding") == "base64":
        return [base64.b64decode(message["body"]).decode("utf-8", "replace")]
    return [str(message["body"])]


def test_no_redis_key_or_value_holds_a_personal_value_or_a_secret(stack):
    texts = {}
    for db in (0, 1):
        texts.update({f"db{db}:{k}": v for k, v in _redis_texts(f"{stack.redis_url}/{db}")})
    assert any(k.startswith("db1:celery-task-meta-") for k in texts)  # the results were there to scan
    found = {k: hits for k, text in texts.items() if (hits := _find(text, stack.needles.every()))}
    assert not found


def captured_notifications(stack: Stack) -> list[str]:
    """The run summaries the workers sent to NOTIFY_URLS (apprise json:// to the test's receiver): the
    whole payload of each (title, message, type), as the receiving service would store it."""
    return [json.dumps(payload) for payload in stack.receiver.received]


def test_no_notification_holds_a_personal_value_or_a_secret(stack):
    texts = captured_notifications(stack)
    assert len(texts) >= 2  # one per run (two batches), so there was something to scan
    assert any("rejected" in text for text in texts)  # the summaries, not empty messages
    found = [hits for text in texts if (hits := _find(text, stack.needles.every()))]
    assert not found


def test_the_scan_finds_what_is_there(stack):
    """Control: the needles are written as the data stores them, so the scans above can find them. Plain
    NHIs are in stg (the engineer's zone); names and dates of birth in identified core, by design."""
    with psycopg.connect(stack.db.url) as conn:
        stg = "\n".join(text for _, text in _table_texts(conn, "stg"))
        core = "\n".join(text for _, text in _table_texts(conn, "core"))
    assert _find(stg, {"NHI": stack.needles.nhis})
    assert _find(core, {"patient name": stack.needles.names}) and _find(core, {"date of birth": stack.needles.dobs})
    assert not _find(core, {"NHI": stack.needles.nhis})
