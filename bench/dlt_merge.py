"""Child process of bench.e2e: dlt 1.31 merging already-parsed rows into Postgres on the natural key.

    python -m bench.dlt_merge ROWS.arrow --url postgresql://user@host/db --table appointments \
        --key appointment_id,practice_id,per_org_id --dataset dlt_bench_1 --pipelines-dir /tmp/x

The rows were parsed in advance (not timed) into an Arrow IPC file of text columns, one per contract
column; here they are handed to dlt as record batches from the memory-mapped file (dlt's fastest input:
no per-row Python normalisation), `write_disposition="merge"`, `primary_key` = the natural key, loader
file format csv (dlt's COPY path for Postgres). Timed: `pipeline.run` (extract, normalise, load, merge).
Prints one JSON line: seconds, rows in the destination table afterwards, peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from bench.stack import own_peak_rss_mb


def arrow_batches(path: Path) -> Iterator:
    import pyarrow as pa

    reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
    for i in range(reader.num_record_batches):
        yield reader.get_batch(i)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arrow", type=Path)
    parser.add_argument("--url", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--key", required=True, help="comma-separated primary key columns")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--pipelines-dir", required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")

    import dlt
    import psycopg
    from psycopg import sql

    key = [k for k in args.key.split(",") if k]
    pipeline = dlt.pipeline(pipeline_name=args.dataset, pipelines_dir=args.pipelines_dir,
                            destination=dlt.destinations.postgres(credentials=args.url),
                            dataset_name=args.dataset)
    resource = dlt.resource(arrow_batches(args.arrow), name=args.table, write_disposition="merge", primary_key=key)
    start = time.perf_counter()
    info = pipeline.run(resource, loader_file_format="csv")
    seconds = time.perf_counter() - start
    formats = sorted({job.job_file_info.file_format for package in info.load_packages
                      for job in package.jobs.get("completed_jobs", [])})
    with psycopg.connect(args.url) as conn:
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(args.dataset, args.table))).fetchone()[0]
    print(json.dumps({"seconds": seconds, "rows": rows, "file_formats": formats, "peak_rss_mb": own_peak_rss_mb()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
