"""Typing benchmark: the typing engine alone (no Postgres), on the COPY text raw landing writes.

    python -m bench.typing --rows 300000 --repeats 3 [--extract Appointments] [--read-mib M] [--threads N]

Set-up (not timed): a generated file of the extract, turned into the COPY text lines the landing sends
to raw (lineage included). Timed: what staging in the landing's pass does with those lines, block by
block (typing_engine/stage.py: Arrow's parse and TypingEngine.type_block, on --threads threads as
typed_blocks runs them, then pgpq's binary encoding), with the
stg COPY's bytes counted and hashed instead of sent, so two versions of the engine can be compared on
time and on output (the SHA-256 of the bytes stg would receive). Prints the median seconds and the
peak RSS of this process, which only types (the file is generated in a child process).
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import resource
import statistics
import tempfile
import time
import types
from datetime import datetime, timezone
from pathlib import Path

from bench.common import write_copy_text
from contracts.registry import get as get_spec
from worker.pipeline.land import copy_columns
from worker.pipeline.typing_engine import stage
from worker.pipeline.typing_engine.engine import TypingEngine
from worker.synth.writer import generate_extract

EXTRACTED = datetime(2025, 8, 12, 8, 50)


def _record(extract: str, name: str):
    """The ledger fields write_copy_text and the engine read (a stand-in: nothing is stored)."""
    at = EXTRACTED.replace(tzinfo=timezone.utc)
    return types.SimpleNamespace(
        file_id=1, load_run_id=1, s3_bucket="bench", s3_key=name, s3_version_id="v1", file_hash="0" * 64,
        date_extracted=at, date_to=at, extract_type="x", per_org_id=1, practice_id=1, file_per_org_id=1,
        file_practice_id=1, loaded_datetime=None, extract=extract)


def _prepare(extract: str, rows: int, folder: str) -> None:
    """In a child process (its memory is not the typing's): the generated file's COPY text in folder/copy.txt."""
    spec = get_spec(extract)
    generated = generate_extract(spec, rows, seed=1, out=Path(folder), date_extracted=EXTRACTED)
    write_copy_text(spec, _record(extract, generated.path.name), generated.path, Path(folder) / "copy.txt")
    generated.path.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extract", default="Appointments")
    parser.add_argument("--read-mib", type=float, default=None,
                        help="MiB of text typed at a time (default: the engine's block_bytes for the extract)")
    parser.add_argument("--threads", type=int, default=1,
                        help="blocks typed at once (TYPING_THREADS; the block size follows, as in the worker)")
    args = parser.parse_args()
    spec = get_spec(args.extract)
    read_bytes = stage.block_bytes(spec, args.threads) if args.read_mib is None else int(args.read_mib * (1 << 20))
    with tempfile.TemporaryDirectory(prefix="indici-bench-typing-") as tmp:
        child = multiprocessing.get_context("spawn").Process(target=_prepare, args=(spec.extract, args.rows, tmp))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"generating the file failed (exit {child.exitcode})")
        record = _record(spec.extract, "generated.csv")
        copy_file = Path(tmp) / "copy.txt"
        engine = TypingEngine(spec, {})
        seconds, digest = [], ""
        for _ in range(args.repeats):
            sha = hashlib.sha256()
            started = time.perf_counter()
            rows = stage._TypedRows(spec, record, engine, None, sha.update)
            with copy_file.open("rb") as fh:
                blocks = stage._copy_text_blocks(fh, copy_columns(spec), spec, read_bytes)
                for batch, block, counts in stage.typed_blocks(blocks, engine, args.threads):
                    rows.take(batch, block, counts)
            rows.end()
            rows.close()
            seconds.append(time.perf_counter() - started)
            digest = sha.hexdigest()
            print(f"{seconds[-1]:.2f} s, {rows.staged:,} rows staged, {rows.rejected:,} rejected", flush=True)
    print(f"median of {args.repeats}: {statistics.median(seconds):.2f} s for {args.rows:,} {spec.extract} rows, "
          f"{args.threads} thread(s), {read_bytes / (1 << 20):g} MiB blocks; "
          f"stg bytes sha256 {digest[:16]}; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
