"""The progress renderer: plain lines when not at a terminal, a live display at one."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

from worker.progress import RunProgress


def _record(file_id: int, status: str, rows: int | None = 100, error: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(file_id=file_id, load_run_id=7, extract="Patients", s3_key=f"key_{file_id}.csv",
                           status=status, rows_read=rows, rows_staged=rows and rows - 2, rows_rejected=2,
                           error=error)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_one_per_finished_file_with_the_throughput():
    out, clock = io.StringIO(), Clock()
    progress = RunProgress(live=False, stream=out, clock=clock)
    clock.now = 2.0
    progress(1, 2, _record(1, "staged"))
    clock.now = 4.0
    progress(2, 2, _record(2, "failed", rows=None, error="key_2.csv: row 2: expected 33 fields, found 32"))
    progress(2, 2, _record(2, "failed", rows=None, error="again"))  # the same file: not repeated
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == ("[1/2] staged    Patients               rows=100 staged=98 rejected=2  key_1.csv  "
                        "(50 rows/s, 0.00 MB/s)")
    assert lines[1].startswith("[2/2] failed    Patients               rows=-  key_2.csv  (25 rows/s")
    assert lines[2] == "        error: key_2.csv: row 2: expected 33 fields, found 32"
    assert len(lines) == 3 and progress.run_id == 7
    assert "\x1b" not in out.getvalue()  # no terminal codes in a log


def test_a_live_display_at_a_terminal():
    out = io.StringIO()
    progress = RunProgress(live=True, stream=out, width=140)
    progress(1, 3, _record(1, "staged"))
    progress(2, 3, _record(2, "merged"))
    progress.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "\x1b[" in out.getvalue()  # a terminal's display
    assert "run 7: 2/3 files done" in text and "rows/s" in text and "MB/s" in text
    assert "[1/3] staged" in text and "key_1.csv" in text  # the finished files' lines stay above it
