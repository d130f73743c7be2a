"""Landing benchmark: bare COPY (baseline) vs raw landing from moto S3 vs staging, in one run.

    python -m bench.landing --rows 1000000 --repeats 3

The baseline is Postgres COPY of exactly the rows raw landing writes (same COPY text, lineage included,
prepared in advance in a local file) into an all-text table with the same columns as raw but no index:
what Postgres alone costs. Raw landing is the real step (`land_file`): S3 GET of the object version,
SHA-256, decode, split, field-count checks, escape and COPY into raw.appointments_raw (with its primary
key and BRIN index), run in a child process so its peak memory is its own. Staging is `stage_file` on
the landed rows. Ratios are baseline time / step time (1.0 = as fast as bare COPY). Medians of repeats.
Memory: peak RSS of the landing process for a file of rows/4 and of rows (flat = similar).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from bench.common import bare_copy_seconds, median, parse_args, row, scratch_settings, timed, write_copy_text
from contracts.registry import get as get_spec
from worker.io.db import connect
from worker.io.s3 import make_client
from worker.pipeline import ledger
from worker.pipeline.run import Selection, plan_run
from worker.pipeline.stage import stage_file
from worker.synth.writer import generate_extract

SPEC = get_spec("Appointments")


def _reset(conn) -> None:
    conn.execute("TRUNCATE raw.appointments_raw, stg.appointments, etl.rejects_appointments, "
                 "etl.dq_results, etl.load_run_files, etl.skipped_keys, etl.load_runs CASCADE")
    conn.commit()


def _land_child(settings, file_id: int) -> dict:
    env = {**os.environ, "DATABASE_URL": settings.database_url.get_secret_value(),
           "DB_ROLE_PREFIX": settings.db_role_prefix, "S3_BUCKET": settings.s3_bucket,
           "S3_ENDPOINT_URL": settings.s3_endpoint_url, "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench"}
    out = subprocess.run([sys.executable, "-m", "bench.land_one", str(file_id)], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _upload(settings, path: Path) -> None:
    make_client(settings).upload_file(str(path), settings.s3_bucket, path.name)


def _plan(settings) -> int:
    with connect(settings) as conn:
        _reset(conn)
        plan = plan_run(conn, make_client(settings), settings, Selection())
    (file_id,) = plan.file_ids
    return file_id


def _copy_text(settings, path: Path, file_id: int, out: Path) -> None:
    with connect(settings) as conn:
        record = ledger.get(conn, file_id)
    write_copy_text(SPEC, record, path, out)


def _baseline(settings, copy_file: Path) -> float:
    with connect(settings) as conn:
        return bare_copy_seconds(conn, SPEC, copy_file)


def main() -> int:
    args = parse_args(__doc__)
    with scratch_settings() as settings, tempfile.TemporaryDirectory(prefix="indici-bench-") as tmp:
        tmpdir = Path(tmp)
        small_dir, big_dir = tmpdir / "small", tmpdir / "big"
        small_dir.mkdir(), big_dir.mkdir()
        big = generate_extract(SPEC, args.rows, seed=1, out=big_dir)
        small = generate_extract(SPEC, max(1, args.rows // 4), seed=2, out=small_dir,
                                 date_extracted=datetime(2025, 8, 12, 8, 50))
        megabytes = big.bytes / 1e6
        print(f"Appointments: {big.rows:,} rows, {megabytes:.1f} MB UTF-16LE ({SPEC.field_count} fields/row); "
              f"generated in {big.seconds:.1f}s")
        _upload(settings, big.path)
        file_id = _plan(settings)
        copy_file = tmpdir / "copy.txt"
        _copy_text(settings, big.path, file_id, copy_file)

        baseline, landing, staging, peaks, spool, copy = [], [], [], [], [], []
        for _ in range(args.repeats):
            baseline.append(_baseline(settings, copy_file))
            file_id = _plan(settings)
            result = _land_child(settings, file_id)
            assert result["status"] == "landed" and result["rows"] == big.rows, result
            landing.append(result["seconds"])
            peaks.append(result["peak_rss_mb"])
            spool.append(result["spool_seconds"])
            copy.append(result["copy_seconds"])
            with connect(settings) as conn:
                seconds, staged = timed(lambda: stage_file(conn, file_id))
            assert staged.staged + staged.rejected + staged.superseded == big.rows, staged
            staging.append(seconds)

        # Memory as files grow: land the small file alone, then compare peaks.
        make_client(settings).delete_object(Bucket=settings.s3_bucket, Key=big.path.name)
        _upload(settings, small.path)
        small_result = _land_child(settings, _plan(settings))

        base = median(baseline)
        print(f"\nmedians of {args.repeats} runs ({big.rows:,} rows, {megabytes:.1f} MB source):")
        print(row("bare COPY into all-text table", base, big.rows, megabytes, None, "(baseline)"))
        print(row("raw landing from moto S3", median(landing), big.rows, megabytes, base,
                  f"peak RSS {median(peaks):.0f} MB"))
        print(f"{'   of which S3 GET + sha256 (spool)':<34} {median(spool):8.2f} s")
        print(f"{'   of which decode/split/COPY':<34} {median(copy):8.2f} s"
              f"  ({base / median(copy):.2f}x of the baseline)")
        print(row("staging raw -> stg/rejects", median(staging), big.rows, megabytes, base))
        print(f"\npeak RSS of the landing process: {small_result['peak_rss_mb']:.0f} MB for {small.rows:,} rows "
              f"({small.bytes / 1e6:.0f} MB), {median(peaks):.0f} MB for {big.rows:,} rows ({megabytes:.0f} MB)")
        print("raw runs (s): baseline", [round(x, 2) for x in baseline], "landing", [round(x, 2) for x in landing],
              "staging", [round(x, 2) for x in staging])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
