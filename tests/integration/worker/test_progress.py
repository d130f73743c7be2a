"""Progress as a person sees it: `run --inline` at a terminal (a pty) shows the live display, in a pipe
plain lines; the display reads each file's stage from the ledger."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys

import pytest

from tests.integration.worker.pipeline.helpers import put_file
from worker.io.db import connect
from worker.io.s3 import make_client
from worker.pipeline.run import Selection, plan_run
from worker.progress import RunProgress
from worker.synth import build_series

pytestmark = pytest.mark.integration

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LINE = re.compile(r"^\[(\d+)/(\d+)\] (staged|failed|duplicate)\s+\w+\s+rows=\S+.*"
                  r"  \(\d[\d,]* rows/s, \d+\.\d\d MB/s\)$")


def _upload(settings, faults=None) -> list:
    (batch,) = build_series(seed=21, patients=8, practices=[(685146, 535)], deltas=0,
                            extracts=["Patients", "Appointments", "Vaccine"], faults=faults)
    s3 = make_client(settings)
    for f in batch.files:
        put_file(s3, settings.s3_bucket, f.name, f.data)
    return batch.files


def _env(settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "NOTIFY_"))}
    env.update({"DATABASE_URL": settings.database_url.get_secret_value(), "DB_ROLE_PREFIX": settings.db_role_prefix,
                "S3_BUCKET": settings.s3_bucket, "S3_ENDPOINT_URL": settings.s3_endpoint_url,
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "NHI_HMAC_KEY": settings.nhi_hmac_key.get_secret_value(), "COLUMNS": "160"})
    return env


def test_not_at_a_terminal_each_file_is_one_plain_line(pipeline_settings):
    files = _upload(pipeline_settings, faults={"wrong_field_count": 1})
    done = subprocess.run([sys.executable, "-m", "worker.cli", "--log-level", "ERROR", "run", "--inline"],
                          env=_env(pipeline_settings), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 1, done.stderr  # partial: the broken file
    assert "\x1b" not in done.stdout
    lines = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == len(files) and all(LINE.match(line) for line in lines), lines
    assert [int(LINE.match(line).group(1)) for line in lines] == list(range(1, len(files) + 1))
    assert {LINE.match(line).group(2) for line in lines} == {str(len(files))}
    assert "        error: " in done.stdout  # the failed file's reason under its line


def test_at_a_terminal_the_display_is_live(pipeline_settings):
    _upload(pipeline_settings)
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "--log-level", "ERROR", "run", "--inline"],
                            env=_env(pipeline_settings), stdin=follower, stdout=follower, stderr=subprocess.DEVNULL)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=300) == 0
    os.close(leader)
    raw = b"".join(chunks).decode("utf-8", "replace")
    text = ANSI.sub("", raw)
    assert raw != text  # terminal codes: a live display, redrawn
    assert re.search(r"run \d+: 3/3 files done · [\d,]+ rows · [\d,]+ rows/s · \d+\.\d\d MB/s", text), text[-2000:]
    assert '"status": "succeeded"' in text  # the summary after the display


def test_the_display_shows_each_file_s_stage_from_the_ledger(pipeline_settings):
    files = _upload(pipeline_settings)
    out = io.StringIO()
    with connect(pipeline_settings) as conn:
        plan = plan_run(conn, make_client(pipeline_settings), pipeline_settings, Selection())
        conn.execute("UPDATE etl.load_run_files SET status = 'landed', rows_read = 8 WHERE file_id = %s",
                     (plan.file_ids[0],))
        conn.commit()
        progress = RunProgress(plan.run_id, live=True, stream=out, width=200)
        assert progress.update(conn) == (0, len(files))
        progress.close()
    text = ANSI.sub("", out.getvalue())
    assert f"run {plan.run_id}: 0/{len(files)} files done" in text
    steps = re.findall(r"^(land|stage)\s+\w+\s+\S+\s+(\S+)\s*$", text, re.MULTILINE)
    assert {key for _, key in steps} == {f.name for f in files}
    assert sorted(step for step, _ in steps) == ["land"] * (len(files) - 1) + ["stage"]
