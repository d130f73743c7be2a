"""`indici-ingest demo` end to end (inline): it creates its configured database when missing, explains the
outcome (naming the planted unknown domain value), suggests only queries and commands that return
something, says what it found on a re-run, and never drops a database it did not create."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import psycopg
import pytest

from tests.integration.conftest import ADMIN_URL, TestDatabase, drop_database
from worker.demo import DEMO_FAULTS, demo_start
from worker.synth import build_series

pytestmark = pytest.mark.integration


def _demo(url: str, prefix: str, cwd, *extra: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "CELERY_", "NOTIFY_"))}
    env.update({"DATABASE_URL": url, "DB_ROLE_PREFIX": prefix, **(env_extra or {})})
    return subprocess.run([sys.executable, "-m", "worker.cli", "--log-level", "ERROR", "demo", "--inline",
                           "--patients", "10", *extra], env=env, cwd=cwd, capture_output=True, text=True, timeout=900)


@pytest.fixture()
def missing_db():
    """A database name nobody has created; dropped (with its roles) afterwards."""
    suffix = uuid.uuid4().hex[:10]
    name = f"indici_demo_{suffix}"
    db = TestDatabase(url=f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}", name=name, role_prefix=f"t{suffix}_")
    try:
        yield db
    finally:
        drop_database(db)


def _suggestions(out: str) -> tuple[list[str], list[str]]:
    block = out[out.index("look further"):].splitlines()[1:]
    sql = [m.group(1) for line in block if (m := re.match(r'\s+psql "\$DATABASE_URL" -c "(.*)"$', line))]
    cli = [line.strip() for line in block if line.strip().startswith("indici-ingest ")]
    return sql, cli


def test_demo_creates_its_database_explains_the_outcome_and_reruns(missing_db, tmp_path):
    done = _demo(missing_db.url, missing_db.role_prefix, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert f"database {missing_db.name} (created)" in out
    for expected in ("night 1: full batch", "night 3: delta batch", "files by status", "rejects and nullified",
                     "anomalies against the baseline", "health: ", "exactly those with a planted fatal fault",
                     "look further"):
        assert expected in out, expected
    with psycopg.connect(missing_db.url) as conn:
        runs = conn.execute("SELECT status FROM etl.load_runs ORDER BY load_run_id").fetchall()
        closed = conn.execute("SELECT count(*) FROM core.dim_patient WHERE NOT is_current").fetchone()[0]
    assert [r[0] for r in runs][:2] == ["succeeded", "succeeded"] and len(runs) == 3
    assert closed > 0  # the deltas changed tracked patient attributes: SCD2 history exists
    # The planted unknown domain value is named, not lost among every value that awaits a label.
    named = re.findall(r"(\w+)\.(\w+) = '([^']*)' \(domain \w+, first in [^)]*\)  <- the planted "
                       r"unknown_domain_value", out)
    batches = build_series(seed=7, patients=10, deltas=2, faults=DEMO_FAULTS, start=demo_start())
    planted = {(f.extract, fault.column, fault.value) for b in batches for f in b.files for fault in f.faults
               if fault.kind == "unknown_domain_value"}
    assert set(named) == planted and len(planted) == DEMO_FAULTS["unknown_domain_value"]

    sql, cli = _suggestions(out)
    assert sql and cli
    with psycopg.connect(missing_db.url) as conn:
        for query in sql:  # every suggested query returns rows
            assert conn.execute(query).fetchall(), query
    env = {**os.environ, "DATABASE_URL": missing_db.url, "DB_ROLE_PREFIX": missing_db.role_prefix}
    env.pop("CELERY_BROKER_URL", None)
    for command in cli:  # every suggested command shows something
        ran = subprocess.run([sys.executable, "-m", "worker.cli", "--log-level", "ERROR", *command.split()[1:]],
                             env=env, capture_output=True, text=True, timeout=120)
        assert ran.returncode in ((0, 1) if command.endswith("health") else (0,)), (command, ran.stderr)
        assert ran.stdout.strip() and not ran.stdout.startswith("no "), command

    again = _demo(missing_db.url, missing_db.role_prefix, tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "(existing, used as it is)" in again.stdout
    assert re.search(r"found: 3 earlier runs .* files 1 failed, \d+ merged, \d+ rows in core.dim_patient", again.stdout)
    with psycopg.connect(missing_db.url) as conn:  # nothing was loaded twice
        assert conn.execute("SELECT count(*) FROM etl.load_run_files WHERE status = 'duplicate'").fetchone()[0] > 0
        assert conn.execute("SELECT count(*) FROM core.dim_patient").fetchone()[0] == \
            conn.execute("SELECT count(DISTINCT (patient_id, practice_id, per_org_id, effective_from)) "
                         "FROM core.dim_patient").fetchone()[0]


def test_fresh_never_drops_a_database_the_demo_did_not_create(empty_db, tmp_path):
    done = _demo(empty_db.url, empty_db.role_prefix, tmp_path, "--fresh")
    assert done.returncode == 2 and "was not created by the demo, so it is not dropped" in done.stderr
    with psycopg.connect(ADMIN_URL) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (empty_db.name,)).fetchone()


def test_external_uses_the_configured_bucket_and_starts_nothing(missing_db, s3_server, s3_bucket, tmp_path):
    """What the compose demo profile runs (there with the stack's workers; here --inline)."""
    done = _demo(missing_db.url, missing_db.role_prefix, tmp_path, "--external", env_extra={
        "S3_ENDPOINT_URL": s3_server.endpoint_url, "S3_BUCKET": s3_bucket,
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "S3: the configured bucket at " + s3_server.endpoint_url in done.stdout
    assert not (tmp_path / ".demo").exists()  # no moto, Redis or worker of its own
    listed = s3_server.client().list_objects_v2(Bucket=s3_bucket)
    with psycopg.connect(missing_db.url) as conn:
        files = conn.execute("SELECT count(*) FROM etl.load_run_files").fetchone()[0]
    assert listed["KeyCount"] == files > 0
