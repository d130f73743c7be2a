"""`indici-ingest demo` end to end (inline, into a database of its own): the main job works and says so."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest

pytestmark = pytest.mark.integration


def test_demo_runs_three_nights_and_explains_the_outcome(empty_db, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "CELERY_"))}
    env.update({"DATABASE_URL": empty_db.url, "DB_ROLE_PREFIX": empty_db.role_prefix})
    done = subprocess.run([sys.executable, "-m", "worker.cli", "--log-level", "ERROR", "demo", "--inline",
                           "--patients", "10"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for expected in ("night 1: full batch", "night 3: delta batch", "files by status:", "rejects and nullified",
                     "exactly those with a planted fatal fault", "look further"):
        assert expected in out
    with psycopg.connect(empty_db.url) as conn:
        runs = conn.execute("SELECT status FROM etl.load_runs ORDER BY load_run_id").fetchall()
        closed = conn.execute("SELECT count(*) FROM core.dim_patient WHERE NOT is_current").fetchone()[0]
    assert [r[0] for r in runs][:2] == ["succeeded", "succeeded"] and len(runs) == 3
    assert closed > 0  # the deltas changed tracked patient attributes: SCD2 history exists
