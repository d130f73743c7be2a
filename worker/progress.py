"""Progress of a run as a person follows it: a live display at a terminal, plain lines otherwise.

At a terminal (rich): files done of total with a bar, rows and MB per second since the display started,
and a table of the files still in flight with the step each is in or waits for (land, stage, merge);
each finished file also leaves a line above the display. Elsewhere (a pipe, a log file, CI): only the
lines, one per finished file, each with the throughput so far, so logs stay readable and greppable:

    [3/12] merged    Patients               rows=300 staged=298 rejected=2  <key>  (1,234 rows/s, 0.52 MB/s)

What is shown comes from etl.load_run_files (the ledger is the truth about a run, whichever process
does the work), read with the caller's connection or one of its own. The interface is small, so the
loops that drive it need not know about terminals:

- `update(conn=None) -> (done, total)`: read the run's files and render; what
  `worker.orchestration.wait_for_run` calls on every poll (the interface of its FileProgress);
- calling the object, `progress(index, total, record)`: the callback of `run_inline` after each file
  (the run is known from the record);
- `close()` (or a `with` block): end the live display.

Nothing here shows a value from a row: counts, extract names, S3 keys, statuses and errors as the
ledger holds them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, Self

import psycopg

# A file whose own work is over (staged files still wait for the run's merge).
DONE = ("staged", "merged", "duplicate", "skipped", "failed")
# A file's stage, from where the ledger says it has got to: the step it is in or waits for (a worker may
# be on it, or it is queued; the ledger does not tell those apart).
STAGE_OF = {"pending": "land", "landed": "stage", "staged": "merge"}
MB = 1024 * 1024


@dataclass(frozen=True)
class FileLine:
    """One file of the run as the display needs it."""

    file_id: int
    extract: str
    s3_key: str
    status: str
    rows_read: int | None
    rows_staged: int | None
    rows_rejected: int | None
    size: int | None
    error: str | None


def _files(conn: psycopg.Connection, run_id: int) -> list[FileLine]:
    rows = conn.execute(
        "SELECT file_id, extract, s3_key, status, rows_read, rows_staged, rows_rejected, s3_size, error "
        "FROM etl.load_run_files WHERE load_run_id = %s ORDER BY file_id",
        (run_id,),
    ).fetchall()
    if not conn.autocommit:
        conn.commit()  # a snapshot, not a transaction held open between polls
    return [FileLine(*row) for row in rows]


def _rate(value: float, seconds: float) -> float:
    return value / seconds if seconds > 0 else 0.0


class RunProgress:
    """Follows one run's files (see the module docstring). `live` None: a live display when `stream`
    is a terminal. `connect` opens a connection of its own when the caller gives none."""

    def __init__(self, run_id: int | None = None, *, live: bool | None = None, stream: IO[str] | None = None,
                 connect: Callable[[], psycopg.Connection] | None = None, width: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.run_id = run_id
        self.stream = stream if stream is not None else sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self._connect = connect
        self._conn: psycopg.Connection | None = None
        self._clock = clock
        self._started = clock()
        self._shown: dict[int, str] = {}
        self._files: list[FileLine] = []
        self._total = 0  # the largest total a caller has said (the inline callback's)
        self._display: Any = None
        self._console: Any = None
        if self.live:
            from rich.console import Console

            self._console = Console(file=self.stream, force_terminal=True, width=width)

    # -- the interface ---------------------------------------------------------------------------------
    def update(self, conn: psycopg.Connection | None = None) -> tuple[int, int]:
        """Read the run's files (with `conn`, else a connection of its own) and render them."""
        if self.run_id is None:
            return 0, 0
        self._files = _files(conn if conn is not None else self._own_connection(), self.run_id)
        self.render(self._files)
        return self.counts()

    def __call__(self, index: int, total: int, record: Any) -> None:
        """run_inline's callback: one more file is done."""
        if self.run_id is None:
            self.run_id = int(record.load_run_id)
        if self._connect is not None or self._conn is not None:
            self.update()
            return
        # No connection to read the ledger with: render what the callback says.
        line = FileLine(record.file_id, record.extract, record.s3_key, record.status, record.rows_read,
                        record.rows_staged, record.rows_rejected, None, record.error)
        self._files = [f for f in self._files if f.file_id != line.file_id] + [line]
        self.render(self._files, total)

    def close(self) -> None:
        """End the display: the live part goes, one line with the totals stays."""
        if self._display is not None:
            if self._conn is not None and self.run_id is not None:
                self._files = _files(self._conn, self.run_id)  # the final statuses (after the merge)
            self._display.stop()
            self._display = None
            self._console.print(self._headline(self._files), markup=False, highlight=False)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- rendering -------------------------------------------------------------------------------------
    def counts(self, total: int | None = None) -> tuple[int, int]:
        self._total = max(self._total, total or 0)
        done = sum(1 for f in self._files if f.status in DONE)
        return done, max(self._total, len(self._files))

    def throughput(self) -> tuple[float, float, float]:
        """(rows per second, MB per second, seconds) since the display started, over read files."""
        seconds = self._clock() - self._started
        rows = sum(f.rows_read or 0 for f in self._files)
        size = sum(f.size or 0 for f in self._files if f.rows_read is not None)
        return _rate(rows, seconds), _rate(size / MB, seconds), seconds

    def line(self, index: int, total: int, f: FileLine) -> str:
        rows = f.rows_read if f.rows_read is not None else "-"
        extra = f" staged={f.rows_staged} rejected={f.rows_rejected}" if f.rows_staged is not None else ""
        rows_s, mb_s, _ = self.throughput()
        text = (f"[{index}/{total}] {f.status:<9} {f.extract:<22} rows={rows}{extra}  {f.s3_key}"
                f"  ({rows_s:,.0f} rows/s, {mb_s:.2f} MB/s)")
        if f.status == "failed" and f.error:
            text += f"\n        error: {f.error}"
        return text

    def render(self, files: list[FileLine], total: int | None = None) -> None:
        """Print the files that finished since the last call; refresh the live display."""
        _, count = self.counts(total)
        for f in files:
            if f.status not in DONE:
                continue
            last = self._shown.get(f.file_id)
            if last is None or (last == "failed" and f.status != "failed"):  # once; again when a retry worked
                self._shown[f.file_id] = f.status
                self._emit(self.line(len(self._shown), count, f))
        if self.live:
            self._refresh(files, total)

    def _emit(self, text: str) -> None:
        if self.live:
            self._console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=self.stream, flush=True)

    def _refresh(self, files: list[FileLine], total: int | None) -> None:
        from rich.live import Live

        if self._display is None:
            self._display = Live(self._renderable(files, total), console=self._console, refresh_per_second=4,
                                 transient=True)
            self._display.start()
        else:
            self._display.update(self._renderable(files, total))

    def _headline(self, files: list[FileLine], total: int | None = None) -> str:
        done, count = self.counts(total)
        rows_s, mb_s, seconds = self.throughput()
        rows = sum(f.rows_read or 0 for f in files)
        failed = sum(1 for f in files if f.status == "failed")
        return (f"run {self.run_id}: {done}/{count} files done" + (f", {failed} failed" if failed else "")
                + f" · {rows:,} rows · {rows_s:,.0f} rows/s · {mb_s:.2f} MB/s · {seconds:.0f}s")

    def _renderable(self, files: list[FileLine], total: int | None = None) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        done, count = self.counts(total)
        head = Table.grid(padding=(0, 1))
        head.add_row(ProgressBar(total=max(count, 1), completed=done, width=30), self._headline(files, total))
        busy = [f for f in files if f.status not in DONE]
        waiting = sum(1 for f in files if f.status == "staged")
        table = Table(box=None, show_header=bool(busy), pad_edge=False)
        for column in ("step", "extract", "rows", "file"):
            table.add_column(column, no_wrap=True, overflow="ellipsis")
        for f in busy[:10]:
            table.add_row(STAGE_OF.get(f.status, f.status), f.extract,
                          "-" if f.rows_read is None else f"{f.rows_read:,}", f.s3_key)
        if len(busy) > 10:
            table.add_row("", f"... {len(busy) - 10} more", "", "")
        if waiting:
            table.add_row(STAGE_OF["staged"], f"{waiting} files staged", "", "")
        return Group(head, table)

    def _own_connection(self) -> psycopg.Connection:
        if self._conn is None:
            if self._connect is None:
                raise RuntimeError("RunProgress.update needs a connection (or connect=...)")
            self._conn = self._connect()
        return self._conn


def for_settings(settings: Any, run_id: int | None = None, **options: Any) -> RunProgress:
    """A RunProgress that reads the ledger over a connection of its own (autocommit: each read sees the
    latest commit), for the inline path whose callback gives no connection."""
    from worker.io.db import open_connection

    return RunProgress(run_id, connect=lambda: open_connection(settings, autocommit=True), **options)
