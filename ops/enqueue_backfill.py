#!/usr/bin/env python
"""Enqueue a backfill on the Celery workers (and optionally wait for it).

    python ops/enqueue_backfill.py --from 2025-08-01 --to 2025-08-31 [--extract Patients ...] [--prefix P] [--wait]

The arguments are exactly those of `indici-ingest backfill` (this script runs that command's own
parser and code, so the two cannot drift apart), plus the global `--log-level`. Exit codes as the CLI:
0 enqueued (or, with --wait, succeeded), 1 the run failed or was partial, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run from a checkout without `pip install -e .`: the repository root holds the `worker` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from worker import cli

    argv = list(sys.argv[1:] if argv is None else argv)
    global_options = argparse.ArgumentParser(add_help=False)
    global_options.add_argument("--log-level", default="INFO")
    known, rest = global_options.parse_known_args(argv)
    return cli.main(["--log-level", known.log_level, "backfill", *rest])


if __name__ == "__main__":
    sys.exit(main())
