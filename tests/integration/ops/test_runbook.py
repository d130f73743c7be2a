"""ops/RUNBOOK.md cannot rot: every fenced `sh` and `sql` block runs, in order, against a database loaded
with the demo's generated data (three nightly runs, the demo's planted faults) and a planted stuck run,
and exits as documented. The conventions are at the top of the runbook."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.integration.worker.pipeline.helpers import reset_config, reset_data
from worker.demo import DEMO_FAULTS, demo_start
from worker.io.db import connect
from worker.io.s3 import make_client
from worker.pipeline.run import Selection, run_inline
from worker.synth import build_series, write_s3

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
RUNBOOK = REPO / "ops" / "RUNBOOK.md"
RUN = ("sh", "sql")
KNOWN_FENCES = (*RUN, "text", "json")
NO_TEST = "no-test"


@dataclass(frozen=True)
class Block:
    line: int
    lang: str
    attrs: tuple[str, ...]
    body: str

    @property
    def runs(self) -> bool:
        return self.lang in RUN and NO_TEST not in self.attrs

    @property
    def expected_exit(self) -> int:
        codes = [int(a.removeprefix("exit=")) for a in self.attrs if a.startswith("exit=")]
        return codes[0] if codes else 0

    @property
    def id(self) -> str:
        return f"line{self.line}-{self.lang}"


def blocks(text: str) -> list[Block]:
    """Every fenced block: its first line number, language, attributes and body."""
    out: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^```(\S+)((?:[ \t]+\S+)*)\s*$", lines[i])
        if opening is None:
            i += 1
            continue
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"RUNBOOK.md line {start}: the fence is never closed"
        out.append(Block(start, opening.group(1), tuple(opening.group(2).split()), "\n".join(body) + "\n"))
        i += 1
    return out


BLOCKS = blocks(RUNBOOK.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Loaded:
    url: str
    env: dict[str, str]
    variables: dict[str, int]
    stuck_run_id: int


@pytest.fixture(scope="module")
def loaded(migrated_db, s3_server) -> Iterator[Loaded]:
    """The demo's three nights (inline) into the session database and a fresh versioned bucket, plus a run
    that has been 'running' for three hours without progress."""
    bucket = f"indici-runbook-{uuid.uuid4().hex[:10]}"
    s3 = s3_server.client()
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "ap-southeast-2"})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    reset_data(migrated_db.url)
    reset_config(migrated_db.url)
    secrets = {"S3_BUCKET": bucket, "S3_ENDPOINT_URL": s3_server.endpoint_url, "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "ap-southeast-2",
               "NHI_HMAC_KEY": "runbook-test-nhi-hmac-key-of-32-bytes-or-more"}
    settings = migrated_db.settings(**secrets)
    client = make_client(settings)
    runs = []
    for batch in build_series(seed=7, patients=10, deltas=2, faults=DEMO_FAULTS, start=demo_start()):
        write_s3(batch.files, bucket, settings.s3_prefix, client)
        with connect(settings) as conn:
            runs.append(run_inline(conn, client, settings, Selection()))
    with psycopg.connect(migrated_db.url, autocommit=True) as conn:
        stuck = conn.execute("INSERT INTO etl.load_runs (kind, started_at) VALUES ('nightly', now() - interval "
                             "'3 hours') RETURNING load_run_id").fetchone()[0]
        failed = conn.execute("SELECT min(file_id) FROM etl.load_run_files WHERE status = 'failed'").fetchone()[0]
        # The file the runbook reprocesses: a good one (the planted broken file would only fail again).
        reprocessed = conn.execute("SELECT min(file_id) FROM etl.load_run_files WHERE status = 'merged' "
                                   "AND extract = 'Appointments'").fetchone()[0]
        patient = conn.execute("SELECT patient_id, practice_id, per_org_id FROM core.dim_patient "
                               "ORDER BY is_current, patient_id LIMIT 1").fetchone()
    assert failed is not None, "the demo's planted broken file did not fail"
    variables = {"run_id": runs[-1]["load_run_id"], "file_id": reprocessed, "stuck_run_id": stuck,
                 "patient_id": patient[0], "practice_id": patient[1], "per_org_id": patient[2]}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "NOTIFY_", "AWS_", "S3_"))}
    env.update(secrets)
    env.update({"DATABASE_URL": migrated_db.url, "DB_ROLE_PREFIX": migrated_db.role_prefix,
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                **{name.upper(): str(value) for name, value in variables.items()}})
    yield Loaded(migrated_db.url, env, variables, stuck)
    reset_config(migrated_db.url)  # the runbook's `config set`s never reach another module's tests


def test_every_block_has_a_known_fence_and_every_untested_one_says_why():
    assert len([b for b in BLOCKS if b.runs]) >= 25, "the runbook lost its tested blocks"
    for block in BLOCKS:
        assert block.lang in KNOWN_FENCES, f"line {block.line}: unknown fence {block.lang!r} (not run: use sh or sql)"
        assert set(block.attrs) <= {NO_TEST} | {a for a in block.attrs if re.fullmatch(r"exit=\d+", a)}, block
        if NO_TEST in block.attrs:
            assert block.body.lstrip().startswith(("#", "--")), f"line {block.line}: say why it is not tested"


def _run(block: Block, loaded: Loaded) -> subprocess.CompletedProcess:
    if block.lang == "sh":
        return subprocess.run(["bash", "-e", "-c", block.body], cwd=REPO, env=loaded.env, capture_output=True,
                              text=True, timeout=600, check=False)
    psql = ["psql", loaded.url, "-X", "-q", "-v", "ON_ERROR_STOP=1",
            *[f"--variable={name}={value}" for name, value in loaded.variables.items()]]
    return subprocess.run(psql, input=block.body, cwd=REPO, env=loaded.env, capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.runs], ids=lambda b: b.id)
def test_block_runs_as_documented(block: Block, loaded: Loaded):
    done = _run(block, loaded)
    assert done.returncode == block.expected_exit, (
        f"RUNBOOK.md line {block.line} exited {done.returncode}, documented {block.expected_exit}\n"
        f"--- block\n{block.body}--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
    if block.lang == "sql":
        assert "ERROR" not in done.stderr, done.stderr


def test_the_runbook_did_what_it_says(loaded: Loaded):
    """After every block ran: the stuck run is closed with an audit row, the restages were runs of their
    own, the relaxed window was set and cleared, and the reprocessed file was loaded again."""
    with psycopg.connect(loaded.url) as conn:
        status, error = conn.execute("SELECT status, error FROM etl.load_runs WHERE load_run_id = %s",
                                     (loaded.stuck_run_id,)).fetchone()
        assert status == "failed" and "closed by an operator" in error
        commands = [r[0] for r in conn.execute("SELECT command FROM etl.operator_actions ORDER BY action_id")]
        assert "close stuck run" in commands and commands.count("restage") == 2
        assert {"config set", "domains map"} <= set(commands)
        restages = conn.execute("SELECT status FROM etl.load_runs WHERE kind = 'restage'").fetchall()
        assert restages == [("succeeded",), ("succeeded",)]
        assert conn.execute("SELECT value FROM etl.config WHERE extract = 'Patients' "
                            "AND key = 'relaxed_thresholds'").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM etl.reprocess_requests WHERE file_id = %s",
                            (loaded.variables["file_id"],)).fetchone() == (1,)
        assert conn.execute("SELECT status FROM etl.load_run_files WHERE file_id = %s",
                            (loaded.variables["file_id"],)).fetchone() == ("merged",)  # the next run loaded it
