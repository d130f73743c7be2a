"""`indici-ingest demo`: the main job end to end on generated data, on a fresh machine.

Services: the configured Postgres (DATABASE_URL), else the local one on 127.0.0.1:5432 (a fresh
`indici_demo` database), else an embedded Postgres (pgserver) under .demo/; a moto S3 server in server
mode with a versioned bucket. The generator writes a full batch and two weekly deltas (with a few planted
faults) and each batch is loaded by the nightly run as it "arrives", like three real nights.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import psycopg
from psycopg import sql

from worker.pipeline.run import Selection

DEMO_DIR = Path(".demo")
DEMO_DB = "indici_demo"
BUCKET = "poutiri-datacraft-data"
DEMO_FAULTS = {"bad_timestamp": 2, "missing_required": 2, "unknown_domain_value": 2, "duplicate_key": 1,
               "nasty_text": 3, "wrong_field_count": 1}


def _listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _database_url() -> tuple[str, str]:
    """(url, where) of the demo database."""
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"], "configured DATABASE_URL"
    if _listening("127.0.0.1", 5432):
        admin = "postgresql://127.0.0.1:5432/postgres"
        where = "local Postgres on 127.0.0.1:5432, database indici_demo (recreated)"
    else:
        import pgserver  # embedded Postgres, only needed where none is running

        server = pgserver.get_server(DEMO_DIR / "pgdata", cleanup_mode=None)
        admin = server.get_uri()
        where = f"embedded Postgres (pgserver) in {DEMO_DIR / 'pgdata'}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DEMO_DB)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DB)))
    base = admin.rsplit("/", 1)[0]
    query = ("?" + admin.split("?", 1)[1]) if "?" in admin.rsplit("/", 1)[1] else ""
    return f"{base}/{DEMO_DB}{query}", where


def _start_moto() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    moto = Path(sys.executable).with_name("moto_server")
    command = [str(moto)] if moto.exists() else [sys.executable, "-m", "moto.server"]
    DEMO_DIR.mkdir(exist_ok=True)
    log = open(DEMO_DIR / "moto.log", "ab")
    proc = subprocess.Popen([*command, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    for _ in range(100):
        if _listening("127.0.0.1", port):
            return proc, f"http://127.0.0.1:{port}"
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the moto S3 server did not start (see .demo/moto.log)")


def _section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)), flush=True)


def run_demo(patients: int = 300, keep: bool = False) -> int:
    from worker.cli import _print_progress
    from worker.io.db import connect
    from worker.io.s3 import make_client
    from worker.pipeline.migrate import upgrade
    from worker.pipeline.run import run_inline
    from worker.settings import Settings, get_settings
    from worker.synth import build_series, write_s3

    started = time.monotonic()
    _section("services")
    url, where = _database_url()
    print(f"Postgres: {where}")
    moto, endpoint = _start_moto()
    print(f"S3: moto server at {endpoint}, bucket {BUCKET} (versioned)")
    os.environ.update({
        "DATABASE_URL": url, "S3_ENDPOINT_URL": endpoint, "S3_BUCKET": BUCKET,
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "demo"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "demo"),
    })
    if not os.environ.get("NHI_HMAC_KEY"):
        os.environ["NHI_HMAC_KEY"] = "demo-only-key-not-secret"
        print("NHI_HMAC_KEY: a demo-only key (set your own secret in production)")
    get_settings.cache_clear()
    settings: Settings = get_settings()
    try:
        s3 = make_client(settings)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": settings.aws_region})
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        upgrade(settings)
        print("schema migrated (raw, stg, etl, core)")

        _section("generated extracts")
        t0 = time.monotonic()
        batches = build_series(seed=7, patients=patients, deltas=2, faults=DEMO_FAULTS)
        print(f"{sum(len(b.files) for b in batches)} files in {len(batches)} batches "
              f"({patients} patients per practice, 2 practices) in {time.monotonic() - t0:.1f}s; "
              f"planted faults: {', '.join(f'{k} x{v}' for k, v in DEMO_FAULTS.items())}")

        summaries = []
        for batch in batches:
            _section(f"night {batch.index + 1}: {batch.kind} batch extracted {batch.date_extracted:%Y-%m-%d %H:%M}")
            write_s3(batch.files, BUCKET, "", s3)
            with connect(settings) as conn:
                summary = run_inline(conn, s3, settings, Selection(), progress=_print_progress)
            summaries.append(summary)
            print(f"run {summary['load_run_id']}: {summary['status']} - {summary['files']} files, "
                  f"{summary['rows_read']} rows read, {summary['rows_staged']} staged, "
                  f"{summary['rows_rejected']} rejected, {summary['rows_superseded']} superseded "
                  f"in {summary.get('seconds', 0):.1f}s")
        planted = {f.name for b in batches for f in b.files if f.fatal_fault}
        failed = {f["s3_key"] for s in summaries for f in s["failures"]}
        _report(settings, summaries, time.monotonic() - started)
        if failed == planted:
            print(f"\nthe {len(failed)} failed file(s) are exactly those with a planted fatal fault: as expected")
            return 0
        print(f"\nUNEXPECTED: failed {sorted(failed - planted)}; planted but not failed {sorted(planted - failed)}")
        return 1
    finally:
        if keep:
            print(f"\nservices left running: moto at {endpoint} (pid {moto.pid}); DATABASE_URL={url}")
        else:
            moto.terminate()


def _report(settings, summaries: list[dict], seconds: float) -> None:
    from worker.io.db import connect

    _section("summary")
    with connect(settings) as conn:
        files = conn.execute(
            "SELECT status, count(*), coalesce(sum(rows_read), 0), coalesce(sum(rows_staged), 0), "
            "coalesce(sum(rows_rejected), 0) FROM etl.load_run_files GROUP BY status ORDER BY status"
        ).fetchall()
        print("files by status:")
        for status, n, read, staged, rejected in files:
            print(f"  {status:<10} {n:>4} files  {read:>8} rows read  {staged:>8} staged  {rejected:>6} rejected")
        rules = conn.execute(
            "SELECT extract, column_name, rule, sum(observed)::bigint FROM etl.dq_results "
            "WHERE check_name = 'rule_violations' GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT 12"
        ).fetchall()
        print("rejects and nullified values by rule (top 12):")
        for extract, column, rule, n in rules:
            print(f"  {n:>6}  {extract}.{column or '*'}: {rule}")
        failed = conn.execute(
            "SELECT s3_key, error FROM etl.load_run_files WHERE status = 'failed' ORDER BY file_id"
        ).fetchall()
        for key, error in failed:
            print(f"failed file: {error}")
        unmapped = conn.execute(
            "SELECT extract, column_name, detail FROM etl.dq_results WHERE check_name = 'unmapped_domain_values' "
            "ORDER BY dq_result_id DESC LIMIT 5"
        ).fetchall()
        for extract, column, detail in unmapped:
            print(f"unmapped domain values in {extract}.{column}: {', '.join(detail['values'][:5])}")
        core = conn.execute(
            "SELECT count(*) FILTER (WHERE NOT is_current), count(*) FROM core.dim_patient"
        ).fetchone()
        print(f"core.dim_patient: {core[1]} rows, {core[0]} closed SCD2 versions")
    print(f"total time {seconds:.1f}s")
    print(
        "\nlook further:\n"
        "  psql \"$DATABASE_URL\" -c 'SELECT load_run_id, status, summary FROM etl.load_runs'\n"
        "  psql \"$DATABASE_URL\" -c 'SELECT row_number, field_errors FROM etl.rejects_appointments LIMIT 5'\n"
        "  psql \"$DATABASE_URL\" -c 'SELECT * FROM etl.dq_results WHERE NOT passed'\n"
        "  indici-ingest health"
    )
