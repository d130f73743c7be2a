"""``indici-ingest synth``: write generated extracts to a folder or an S3 bucket.

    indici-ingest synth --out /tmp/indici --patients 500 --deltas 2 --faults bad_timestamp,duplicate_key
    indici-ingest synth --s3-bucket poutiri-datacraft-data --s3-prefix demo/ --endpoint-url http://127.0.0.1:5000
    indici-ingest synth --out /tmp/bench --extract Appointments --rows 1000000     # one big streamed file

Exit codes: 0 ok, 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

from worker.synth.batches import DEFAULT_PRACTICES, DEFAULT_START
from worker.synth.faults import FAULT_KINDS


def parse_practices(text: str) -> list[tuple[int, int]]:
    """``685146:535,685146:536`` -> [(685146, 535), (685146, 536)]"""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        org, sep, practice = part.partition(":")
        if not sep or not org.strip().isdigit() or not practice.strip().isdigit():
            raise argparse.ArgumentTypeError(f"practice {part!r} is not PerOrgID:PracticeID")
        out.append((int(org), int(practice)))
    if not out:
        raise argparse.ArgumentTypeError("no practices given")
    return out


def _start(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--start {text!r}: {exc}") from None


def add_synth_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    where = parser.add_argument_group("output (one or both)")
    where.add_argument("--out", metavar="DIR", help="folder for the files and manifest.json")
    where.add_argument("--s3-bucket", metavar="B", help="bucket to put the files in")
    where.add_argument("--s3-prefix", metavar="P", default="", help="key prefix (default empty)")
    where.add_argument("--endpoint-url", metavar="URL", default=None, help="S3 endpoint (moto, MinIO)")
    where.add_argument("--region", default=None, help="AWS region for the S3 client")
    what = parser.add_argument_group("what to generate")
    what.add_argument("--seed", type=int, default=1)
    what.add_argument("--patients", type=int, default=100, help="patients per practice (default 100)")
    what.add_argument("--deltas", type=int, default=2, help="delta batches after the full one (default 2)")
    what.add_argument("--practices", type=parse_practices,
                      default=list(DEFAULT_PRACTICES), help="PerOrgID:PracticeID,... (default 685146:535,685146:536)")
    what.add_argument("--faults", default="",
                      help=f"comma-separated fault kinds planted in the last batch ({', '.join(FAULT_KINDS)}, all)")
    what.add_argument("--start", type=_start, default=DEFAULT_START,
                      help="DateExtracted of the full batch, NZ local (default 2025-08-19T08:50)")
    what.add_argument("--extracts", default="", help="only these extracts (comma-separated names)")
    what.add_argument("--bom", action="store_true", help="write a byte-order mark")
    what.add_argument("--utf8", action="store_true", help="UTF-8 instead of UTF-16LE")
    what.add_argument("--vary-tokens", action="store_true", help="use the provider's other file-name spellings")
    bench = parser.add_argument_group("one big file (benchmarks)")
    bench.add_argument("--extract", metavar="NAME", help="stream only this extract ...")
    bench.add_argument("--rows", type=int, metavar="N", help="... with N rows (needs --out)")
    return parser


def run_synth(args: argparse.Namespace) -> int:
    from worker.synth import S3Target, generate
    from worker.synth.writer import generate_extract

    err = sys.stderr
    encoding = "utf-8" if args.utf8 else "utf-16-le"
    if args.extract or args.rows is not None:
        if not (args.extract and args.rows is not None and args.out):
            print("synth: --extract and --rows go together and need --out", file=err)
            return 2
        from pathlib import Path

        from contracts.registry import get

        try:
            spec = get(args.extract)
        except KeyError as exc:
            print(f"synth: {exc}", file=err)
            return 2
        Path(args.out).mkdir(parents=True, exist_ok=True)
        res = generate_extract(spec, args.rows, args.seed, args.out, practice=args.practices[0],
                               encoding=encoding, bom=args.bom)
        print(f"{res.path}: {res.rows} rows, {res.bytes} bytes, {res.seconds:.1f}s")
        return 0
    if not args.out and not args.s3_bucket:
        print("synth: give --out DIR and/or --s3-bucket B", file=err)
        return 2
    if args.patients < 1 or args.deltas < 0:
        print("synth: --patients must be >= 1 and --deltas >= 0", file=err)
        return 2
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = sorted(set(faults) - set(FAULT_KINDS) - {"all"})
    if unknown:
        print(f"synth: unknown fault kinds {unknown}; known: {', '.join(FAULT_KINDS)}", file=err)
        return 2
    extracts = [e.strip() for e in args.extracts.split(",") if e.strip()] or None
    s3 = None
    if args.s3_bucket:
        s3 = S3Target(args.s3_bucket, args.s3_prefix, endpoint_url=args.endpoint_url, region=args.region)
    try:
        batches = generate(args.out, seed=args.seed, patients=args.patients, practices=args.practices,
                           deltas=args.deltas, faults=faults or None, s3=s3, start=args.start, bom=args.bom,
                           encoding=encoding, extracts=extracts, vary_tokens=args.vary_tokens)
    except (KeyError, ValueError) as exc:
        print(f"synth: {exc}", file=err)
        return 2
    for b in batches:
        rows = sum(len(f.rows) for f in b.files)
        planted = sum(len(f.faults) for f in b.files)
        print(f"batch {b.index} ({b.kind}) extracted {b.date_extracted:%Y-%m-%d %H:%M}: "
              f"{len(b.files)} files, {rows} rows, {planted} planted faults")
    where = " and ".join(x for x in (args.out, f"s3://{args.s3_bucket}/{args.s3_prefix}" if args.s3_bucket else None) if x)
    print(f"written to {where}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="indici-ingest synth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_synth_arguments(parser)
    return run_synth(parser.parse_args(argv))


if __name__ == "__main__":  # python -m worker.synth.command
    raise SystemExit(main())
