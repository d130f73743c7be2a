"""bench/common.py's bare-COPY baseline against a migrated database: the lines raw landing writes
(write_copy_text) must load into the baseline table, whatever lineage columns the landing sends."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.common import bare_copy_seconds, write_copy_text
from contracts.registry import get as get_spec
from worker.synth.writer import generate_extract

pytestmark = pytest.mark.integration


def test_the_baseline_copies_the_landing_lines_of_a_generated_file(db_conn, tmp_path: Path) -> None:
    spec = get_spec("Appointments")
    generated = generate_extract(spec, 50, seed=3, out=tmp_path)
    record = SimpleNamespace(file_id=1, s3_bucket="b", s3_key=generated.path.name, s3_version_id="v",
                             date_extracted=datetime(2025, 8, 19, 8, 50, tzinfo=timezone.utc),
                             extract_type="Appointments", per_org_id=685146, practice_id=535, load_run_id=1)
    lines = tmp_path / "copy.txt"
    write_copy_text(spec, record, generated.path, lines)
    assert len(lines.read_bytes().splitlines()) == 50
    assert bare_copy_seconds(db_conn, spec, lines) > 0
    assert db_conn.execute("SELECT to_regclass('public.bench_all_text')").fetchone() == (None,)  # dropped
