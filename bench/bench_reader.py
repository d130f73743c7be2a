"""Micro-benchmark of the Indici reader against a bare UTF-16LE decode of the same bytes.

    .venv/bin/python bench/bench_reader.py --rows 200000

Builds a synthetic UTF-16LE Indici file in memory (~64 fields per row, with empty fields, dates, decimals,
free text containing commas, quotes, tabs, backslashes, CR/LF) and reports, as the median of N runs:
bare ``bytes.decode('utf-16-le')`` (with and without SHA-256), ``IndiciReader.copy_blocks`` (the landing
path: decode, SHA-256, COPY escaping, splitting, per-row field-count check, COPY line rendering; str out),
``IndiciReader.copy_bytes`` (the same, UTF-8 bytes out) and ``IndiciReader.rows``.
"""
from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.io.indici_reader import SEP, TERM, IndiciReader  # noqa: E402

FIELDS = 64


def build_text(n_rows: int, seed: int = 1) -> str:
    rnd = random.Random(seed)
    notes = [
        "Pt reports cough, 3/7. Advised fluids \"rest\".",
        "BP 120/80\r\nReview in 2 weeks\tif no better",
        "C:\\temp\\scan.pdf attached",
        "",
        "Registered ",
        "PO Box 123, Ōtāhuhu",
    ]
    templates = []
    for _ in range(1000):
        f = []
        for j in range(FIELDS - 1):
            k = j % 8
            if k == 0:
                f.append(str(rnd.randint(1, 10**7)))
            elif k == 1:
                f.append(f"2025-0{rnd.randint(1, 9)}-{rnd.randint(10, 28)} 1{rnd.randint(0, 9)}:18:11.347")
            elif k == 2:
                f.append("" if rnd.random() < 0.5 else str(rnd.randint(0, 1)))
            elif k == 3:
                f.append(f"{rnd.randint(0, 999)}.{rnd.randint(0, 99):02d}")
            elif k == 4:
                f.append(rnd.choice(["Mickey", "Summer QUINN", "Default PROVIDER", "+6421458796", "0653"]))
            elif k == 5:
                f.append(rnd.choice(notes))
            elif k == 6:
                f.append("")
            else:
                f.append("-36.882534999999997")
        templates.append(SEP.join(f))
    parts = []
    for i in range(n_rows):
        parts.append(f"{i + 1}{SEP}{templates[i % 1000]}{TERM}")
    return "".join(parts)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--read-size", type=int, default=2 << 20, help="bytes per source chunk (default 2 MiB)")
    args = ap.parse_args(argv)

    data = build_text(args.rows).encode("utf-16-le")
    mv = memoryview(data)
    chunks = [bytes(mv[i:i + args.read_size]) for i in range(0, len(data), args.read_size)]
    mb = len(data) / 1e6

    def bare_decode():
        data.decode("utf-16-le")

    def bare_decode_sha():
        data.decode("utf-16-le")
        hashlib.sha256(data).hexdigest()

    def copy_blocks():
        r = IndiciReader(chunks, FIELDS)
        n = 0
        for block in r.copy_blocks("42\t"):
            n += len(block)
        assert r.rows_read == args.rows, r.rows_read

    def copy_bytes():
        r = IndiciReader(chunks, FIELDS)
        n = 0
        for block in r.copy_bytes("42\t"):
            n += len(block)
        assert r.rows_read == args.rows, r.rows_read

    def rows():
        r = IndiciReader(chunks, FIELDS)
        for _ in r.rows():
            pass
        assert r.rows_read == args.rows

    print(f"python {sys.version.split()[0]}; {args.rows} rows x {FIELDS} fields; "
          f"{mb:.1f} MB UTF-16LE; source chunks {args.read_size} bytes; median of {args.runs} runs")
    results = {}
    for name, fn in [("bare decode", bare_decode), ("bare decode + sha256", bare_decode_sha),
                     ("copy_blocks", copy_blocks), ("copy_bytes", copy_bytes), ("rows", rows)]:
        t = statistics.median(timed(fn) for _ in range(args.runs))
        results[name] = t
        print(f"{name:22s} {t * 1000:9.1f} ms  {mb / t:8.1f} MB/s  {args.rows / t:12,.0f} rows/s")
    base = results["bare decode"]
    print(f"copy_blocks / bare decode time ratio: {results['copy_blocks'] / base:.2f}x "
          f"(vs decode + sha256: {results['copy_blocks'] / results['bare decode + sha256']:.2f}x)")
    print(f"copy_bytes / bare decode time ratio:  {results['copy_bytes'] / base:.2f}x")
    print(f"rows / bare decode time ratio:        {results['rows'] / base:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
