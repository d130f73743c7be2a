"""Shared set-up for benchmarks: a scratch migrated database, a moto S3 server, timing helpers."""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import psycopg
from psycopg import sql

from worker.io.roles import roles
from worker.pipeline.migrate import upgrade
from worker.settings import Settings

ADMIN_URL = os.environ.get("BENCH_ADMIN_DATABASE_URL", "postgresql://127.0.0.1:5432/postgres")


@contextmanager
def scratch_settings(**overrides) -> Iterator[Settings]:
    """Settings for a new migrated database (dropped afterwards) and a moto S3 server with a bucket."""
    from moto.server import ThreadedMotoServer

    suffix = uuid.uuid4().hex[:8]
    name, prefix = f"indici_bench_{suffix}", f"bench{suffix}_"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for var, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}.items():
        os.environ.setdefault(var, value)
    settings = Settings(
        DATABASE_URL=ADMIN_URL.rsplit("/", 1)[0] + "/" + name,
        DB_ROLE_PREFIX=prefix,
        S3_BUCKET="bench-bucket",
        S3_ENDPOINT_URL=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        NHI_HMAC_KEY="bench-nhi-hmac-key-of-at-least-32-bytes",
        **overrides,
    )
    try:
        upgrade(settings)
        from worker.io.s3 import make_client

        s3 = make_client(settings)
        s3.create_bucket(Bucket=settings.s3_bucket,
                         CreateBucketConfiguration={"LocationConstraint": settings.aws_region})
        s3.put_bucket_versioning(Bucket=settings.s3_bucket, VersioningConfiguration={"Status": "Enabled"})
        yield settings
    finally:
        server.stop()
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            for role in roles(settings).all():
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def parse_args(doc: str, default_rows: int = 1_000_000) -> argparse.Namespace:
    """The arguments every benchmark takes: --rows and --repeats (medians are quoted)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rows", type=int, default=default_rows)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def median(values: list[float]) -> float:
    return statistics.median(values)


def row(label: str, seconds: float, rows: int, megabytes: float, baseline: float | None, extra: str = "") -> str:
    ratio = f"{baseline / seconds:5.2f}x" if baseline else "  1.00x"
    return (f"{label:<34} {seconds:8.2f} s {rows / seconds:>11,.0f} rows/s {megabytes / seconds:8.1f} MB/s "
            f"{ratio} {extra}")


def write_copy_text(spec, record, source: Path, out: Path) -> int:
    """The COPY text raw landing writes for `source` (same lines, lineage included), prepared in advance in
    `out` for the bare-COPY baseline; `record` is the file's ledger row. Returns the bytes written."""
    from worker.io.indici_reader import IndiciReader, iter_file_chunks
    from worker.pipeline.land import lineage_prefix

    prefix = lineage_prefix(record, "0" * 64)
    reader = IndiciReader(iter_file_chunks(source), spec.field_count)
    written = 0
    with out.open("wb") as fh:
        for block in reader.copy_bytes(prefix):
            fh.write(block)
            written += len(block)
    return written


def plain_rows(path: Path, field_count: int, chunk: int = 8 << 20) -> Iterator[list[str]]:
    """The rows of a generated file (UTF-16LE, no BOM), split on the format's separators, streamed.

    A stand-in for the project's reader, used only where its interface has changed under the benchmark
    (preparing inputs is never timed)."""
    import codecs

    from worker.synth.writer import SEP, TERM

    decoder = codecs.getincrementaldecoder("utf-16-le")()
    carry = ""
    number = 0
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            parts = (carry + decoder.decode(block)).split(TERM)
            carry = parts.pop()
            for part in parts:
                fields = part.split(SEP)
                number += 1
                if len(fields) != field_count:
                    raise ValueError(f"{path.name}: row {number} has {len(fields)} fields, not {field_count}")
                yield fields
    if (carry + decoder.decode(b"", final=True)).strip():
        raise ValueError(f"{path.name}: data after the last row terminator")


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def write_plain_copy_text(spec, source: Path, out: Path) -> int:
    """COPY text of the file's rows (row number, then every field), without lineage; the fallback of
    write_copy_text. Returns the bytes written."""
    written = 0
    with out.open("wb") as fh:
        lines: list[str] = []
        for number, fields in enumerate(plain_rows(source, spec.field_count), start=1):
            lines.append(f"{number}\t" + "\t".join(_escape(f) for f in fields) + "\n")
            if len(lines) >= 10_000:
                written += fh.write("".join(lines).encode("utf-8"))
                lines.clear()
        written += fh.write("".join(lines).encode("utf-8"))
    return written


def bare_copy_seconds(conn, spec, copy_file: Path, plain: bool = False) -> float:
    """Baseline: Postgres COPY of `copy_file` into an all-text table without index or keys (what Postgres
    alone costs); the table is dropped. The table is shaped like the extract's raw table (with its
    defaults: landed_at, which raw landing does not send, is now() as there) for the lines of
    write_copy_text, or (`plain`) as row number + the contract's columns for write_plain_copy_text."""
    from contracts import naming

    conn.execute("DROP TABLE IF EXISTS public.bench_all_text")
    if plain:
        columns = ["row_number", *spec.column_names]
        conn.execute(sql.SQL("CREATE TABLE public.bench_all_text ({})").format(
            sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in columns)))
    else:
        from worker.pipeline.land import copy_columns

        columns = copy_columns(spec)
        conn.execute(sql.SQL("CREATE TABLE public.bench_all_text (LIKE {} INCLUDING DEFAULTS)").format(
            sql.Identifier(naming.RAW, naming.raw_table(spec))))
    conn.commit()
    statement = sql.SQL("COPY public.bench_all_text ({}) FROM STDIN").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns))

    def copy() -> None:
        with conn.cursor() as cur, cur.copy(statement) as cp, copy_file.open("rb") as fh:
            while chunk := fh.read(8 << 20):
                cp.write(chunk)
        conn.commit()

    seconds, _ = timed(copy)
    conn.execute("DROP TABLE public.bench_all_text")
    conn.commit()
    return seconds
