"""Child process of bench.landing: lands one registered file and reports time and peak memory (JSON)."""

from __future__ import annotations

import json
import sys
import time

from worker.io.db import connect
from worker.io.s3 import make_client
from worker.pipeline.land import land_file
from worker.settings import Settings


def peak_rss_mb() -> float:
    """High-water mark of this process's resident memory (VmHWM; unlike ru_maxrss it does not carry
    the parent's peak across fork + exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    file_id = int(sys.argv[1])
    settings = Settings()
    client = make_client(settings)
    with connect(settings) as conn:
        before = peak_rss_mb()
        start = time.perf_counter()
        result = land_file(conn, client, file_id, settings)
        seconds = time.perf_counter() - start
    print(json.dumps({"status": result.status, "rows": result.rows, "seconds": seconds,
                      "spool_seconds": result.spool_seconds, "copy_seconds": result.copy_seconds,
                      "peak_rss_mb": peak_rss_mb(), "rss_before_mb": before}))


if __name__ == "__main__":
    main()
