"""The command line as a person runs it: a real process, exit codes, per-file lines and a summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import SAMPLE_PATIENTS
from tests.integration.worker.pipeline.helpers import put_file, put_fixture
from worker.io.s3 import make_client
from worker.synth import build_series

pytestmark = pytest.mark.integration


def _cli(settings, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url.get_secret_value(),
        "DB_ROLE_PREFIX": settings.db_role_prefix,
        "S3_BUCKET": settings.s3_bucket,
        "S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "NHI_HMAC_KEY": "test-nhi-hmac-key-of-at-least-32-bytes",
    }
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def _summary(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("\n{") + 1:] if not stdout.startswith("{") else stdout)


def test_run_inline_succeeds_and_prints_each_file(pipeline_settings):
    put_fixture(make_client(pipeline_settings), pipeline_settings.s3_bucket, SAMPLE_PATIENTS)
    done = _cli(pipeline_settings, "run", "--inline")
    assert done.returncode == 0, done.stderr
    assert "[1/1] " in done.stdout and SAMPLE_PATIENTS.name in done.stdout
    summary = _summary(done.stdout)
    assert summary["status"] == "succeeded" and summary["rows_read"] == 2
    records = [json.loads(line) for line in done.stderr.strip().splitlines()]  # JSON log lines
    file_work = [r for r in records if r.get("file_id") is not None]
    assert {r["event"] for r in file_work} >= {"file landed", "file staged"}
    for record in file_work:  # every line of a file's work carries its run and key
        assert record["load_run_id"] == summary["load_run_id"] and record["s3_key"] == SAMPLE_PATIENTS.name
    assert "ZZZ0121" not in done.stdout + done.stderr  # the sample's NHI never reaches output or logs


def test_run_with_a_broken_file_exits_1_and_names_it(pipeline_settings):
    (batch,) = build_series(seed=4, patients=5, practices=[(685146, 535)], deltas=0, extracts=["Vaccine"],
                            faults={"truncated_last_row": 1})
    (broken,) = batch.files
    put_file(make_client(pipeline_settings), pipeline_settings.s3_bucket, broken.name, broken.data)
    done = _cli(pipeline_settings, "--log-level", "ERROR", "run", "--inline")
    assert done.returncode == 1
    assert broken.name in done.stdout and "error:" in done.stdout


def test_backfill_selects_by_date_and_extract(pipeline_settings):
    batches = build_series(seed=4, patients=5, practices=[(685146, 535)], deltas=1, extracts=["Vaccine", "Medicine"])
    s3 = make_client(pipeline_settings)
    for batch in batches:
        for f in batch.files:
            put_file(s3, pipeline_settings.s3_bucket, f.name, f.data)
    day = batches[0].date_extracted.date().isoformat()
    done = _cli(pipeline_settings, "backfill", "--from", day, "--to", day, "--extract", "Vaccine", "--inline")
    assert done.returncode == 0, done.stderr
    summary = _summary(done.stdout)
    assert summary["files"] == 1


@pytest.mark.parametrize("args", [["backfill", "--from", "2025-13-01", "--to", "2025-01-01", "--inline"],
                                  ["backfill", "--from", "2025-02-01", "--to", "2025-01-01", "--inline"],
                                  ["no-such-command"]])
def test_bad_usage_exits_2(pipeline_settings, args):
    assert _cli(pipeline_settings, *args).returncode == 2


def test_trace_prints_a_patients_history_and_fails_for_an_unknown_key(pipeline_settings):
    put_fixture(make_client(pipeline_settings), pipeline_settings.s3_bucket, SAMPLE_PATIENTS)
    assert _cli(pipeline_settings, "run", "--inline").returncode == 0
    done = _cli(pipeline_settings, "--log-level", "ERROR", "trace", "dim_patient", "9545417", "535", "685146")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert len(result["core"]) == 1 and result["core"][0]["row_number"] == 1
    assert SAMPLE_PATIENTS.name in json.dumps(result["files"])
    assert "ZZZ0121" not in done.stdout  # trace shows lineage, never the NHI
    missing = _cli(pipeline_settings, "--log-level", "ERROR", "trace", "dim_patient", "1", "535", "685146")
    assert missing.returncode == 1 and "no row" in missing.stderr
