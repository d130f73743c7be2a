"""Weekly full Patients: does the cost of a merge follow the batch, not the history? (issue 7, item 3)

    python -m bench.weekly_merge --patients 20000 --weeks 20

Set-up (not timed): one generated Patients file of --patients rows; then --weeks weekly full files of
the same patients, each extracted 7 days after the last, in which every row's LoadedDateTime moves to
the week's delivery, --tracked-share of the rows change a tracked attribute (family name) and
--untracked-share an untracked one (email). Each week is landed and staged by the real pipeline, then
merged; only the merge is timed (merge_extract, in its own transaction), so the history in stg and
core grows by one full file a week while each week's batch stays the same size.

Reported: the merge seconds of each week, the ratio of the last week to the first (target: at most
1.2), the median of the last three weeks to the median of the first three, and what each merge wrote.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from bench.common import scratch_settings
from contracts.registry import get as get_spec
from worker.io.db import connect
from worker.io.indici_reader import SEP, TERM, encode_rows
from worker.io.s3 import make_client
from worker.pipeline.merge import merge_extract
from worker.pipeline.run import Selection, plan_run, process_file
from worker.synth.writer import file_name, generate_extract

SPEC = get_spec("Patients")
PRACTICE = (685146, 535)
FIRST = datetime(2025, 1, 6, 8, 50)


def _base_rows(patients: int, tmp: Path) -> list[list[str]]:
    generated = generate_extract(SPEC, patients, seed=1, out=tmp, practice=PRACTICE, date_extracted=FIRST)
    text = generated.path.read_bytes().decode("utf-16-le")
    generated.path.unlink()
    return [part.split(SEP) for part in text.split(TERM)[:-1]]


def _week_rows(base: list[list[str]], week: int, extracted: datetime, tracked: float, untracked: float,
               state: dict[int, tuple[str, str]]) -> list[list[str]]:
    """The week's full file: every patient, its LoadedDateTime moved; a share of them changed."""
    names = SPEC.column_names
    family, email, loaded = names.index("family_name"), names.index("email"), names.index("loaded_date_time")
    rng = random.Random(week)
    out = []
    for index, row in enumerate(base):
        row = list(row)
        current = state.get(index, (row[family], row[email]))
        if week > 0:
            draw = rng.random()
            if draw < tracked:
                current = (f"Family{week}x{index}", current[1])
            elif draw < tracked + untracked:
                current = (current[0], f"p{index}w{week}@example.org")
        state[index] = current
        row[family], row[email] = current
        row[loaded] = (extracted - timedelta(minutes=61)).strftime("%Y-%m-%d %H:%M:%S.350")
        out.append(row)
    return out


def _stage_week(settings, s3, rows: list[list[str]], extracted: datetime) -> int:
    dto = extracted - timedelta(minutes=186)
    name = file_name(PRACTICE[0], PRACTICE[1], SPEC.file_tokens[0], dto - timedelta(days=7), dto, extracted)
    s3.put_object(Bucket=settings.s3_bucket, Key=name, Body=encode_rows(rows))
    with connect(settings) as conn:
        day = extracted.date()
        plan = plan_run(conn, s3, settings, Selection(kind="backfill", date_from=day, date_to=day))
        (file_id,) = plan.file_ids
        assert process_file(conn, s3, file_id, settings) == "staged"
        conn.execute("ANALYZE stg.patients")
        conn.commit()
    return file_id


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=20_000)
    parser.add_argument("--weeks", type=int, default=20)
    parser.add_argument("--tracked-share", type=float, default=0.01)
    parser.add_argument("--untracked-share", type=float, default=0.02)
    args = parser.parse_args()
    seconds: list[float] = []
    notes: list[str] = []
    with scratch_settings() as settings, tempfile.TemporaryDirectory(prefix="indici-weekly-") as tmp:
        s3 = make_client(settings)
        base = _base_rows(args.patients, Path(tmp))
        state: dict[int, tuple[str, str]] = {}
        for week in range(args.weeks):
            extracted = FIRST + timedelta(days=7 * week)
            rows = _week_rows(base, week, extracted, args.tracked_share, args.untracked_share, state)
            file_id = _stage_week(settings, s3, rows, extracted)
            with connect(settings) as conn:
                started = time.perf_counter()
                result = merge_extract(conn, SPEC, [file_id], settings)
                conn.execute("UPDATE etl.load_run_files SET status = 'merged', merged_at = now() WHERE file_id = %s",
                             (file_id,))
                conn.commit()
                seconds.append(time.perf_counter() - started)
                conn.execute("ANALYZE core.dim_patient")
                conn.commit()
            extra = {k: getattr(result, k) for k in ("fast", "slow") if hasattr(result, k)}
            notes.append(f"week {week + 1:2d}: {seconds[-1]:6.2f} s  inserted {result.inserted:6d}  "
                         f"updated {result.updated:6d}  deleted {result.deleted:5d}  {extra}")
            print(notes[-1], flush=True)
    first, last = seconds[0], seconds[-1]
    head, tail = statistics.median(seconds[:3]), statistics.median(seconds[-3:])
    print(f"\n{args.weeks} weekly full Patients files of {args.patients:,} rows "
          f"({args.tracked_share:.0%} tracked, {args.untracked_share:.0%} untracked changes a week):")
    print(f"merge of week 1: {first:.2f} s; week {args.weeks}: {last:.2f} s; "
          f"ratio {last / first:.2f}x (target <= 1.20x)")
    print(f"median of the last 3 weeks / median of the first 3: {tail / head:.2f}x")
    print("seconds per week:", [round(x, 2) for x in seconds])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
