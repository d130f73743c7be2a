"""`indici-ingest demo`: the main job end to end on generated data, on a fresh machine.

Services: the configured Postgres (DATABASE_URL), else the local one on 127.0.0.1:5432 (a fresh
`indici_demo` database), else an embedded Postgres (pgserver) under .demo/; the configured Redis
(CELERY_BROKER_URL), else the local one on 127.0.0.1:6379 (database 5), else a redis-server started for
the demo; a moto S3 server in server mode with a versioned bucket; a real Celery worker process. The
generator writes a full batch and two weekly deltas (with a few planted faults) and each batch is loaded
by the nightly run as it "arrives", like three real nights. `--inline` runs the same steps without Celery.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from psycopg import sql

from worker.pipeline.run import Selection
from worker.redact import mask_url

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


def _redis_url() -> tuple[str, str, subprocess.Popen | None]:
    """(broker url, where, process we started or None)."""
    if os.environ.get("CELERY_BROKER_URL"):
        return os.environ["CELERY_BROKER_URL"], "configured CELERY_BROKER_URL", None
    if _listening("127.0.0.1", 6379):
        return "redis://127.0.0.1:6379/5", "local Redis on 127.0.0.1:6379, database 5", None
    port = _free_port()
    DEMO_DIR.mkdir(exist_ok=True)
    proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if _listening("127.0.0.1", port):
            return f"redis://127.0.0.1:{port}/0", f"redis-server started for the demo on port {port}", proc
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def _start_worker() -> subprocess.Popen:
    """A real Celery worker process (two processes, like a small production worker)."""
    celery = Path(sys.executable).with_name("celery")
    command = [str(celery)] if celery.exists() else [sys.executable, "-m", "celery"]
    log = open(DEMO_DIR / "worker.log", "ab")
    return subprocess.Popen([*command, "-A", "worker.app", "worker", "--pool=prefork", "--concurrency=2",
                             "--loglevel=INFO", "--hostname=demo@%h"], stdout=log, stderr=log)


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def _section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)), flush=True)


def run_demo(patients: int = 300, keep: bool = False, inline: bool = False) -> int:
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
    redis_proc = worker = None
    env = {
        "DATABASE_URL": url, "S3_ENDPOINT_URL": endpoint, "S3_BUCKET": BUCKET,
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "demo"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "demo"),
    }
    if not inline:
        broker, broker_where, redis_proc = _redis_url()
        env["CELERY_BROKER_URL"] = broker
        env["CELERY_RESULT_BACKEND"] = os.environ.get("CELERY_RESULT_BACKEND", broker)
        print(f"Redis: {broker_where}")
    os.environ.update(env)
    if not os.environ.get("NHI_HMAC_KEY"):
        os.environ["NHI_HMAC_KEY"] = "demo-only-nhi-hmac-key-not-a-secret"
        print("NHI_HMAC_KEY: a demo-only key (set your own secret in production)")
    get_settings.cache_clear()
    settings: Settings = get_settings()
    try:
        s3 = make_client(settings)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": settings.aws_region})
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        upgrade(settings)
        print("schema migrated (raw, stg, etl, core)")
        if not inline:
            worker = _start_worker()
            print(f"Celery worker started (pid {worker.pid}; log in {DEMO_DIR / 'worker.log'})")

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
            if inline:
                with connect(settings) as conn:
                    summary = run_inline(conn, s3, settings, Selection(), progress=_print_progress)
            else:
                summary = _nightly_via_celery(settings, _print_progress)
            summaries.append(summary)
            print(f"run {summary['load_run_id']}: {summary['status']} - {summary['files']} files, "
                  f"{summary['rows_read']} rows read, {summary['rows_staged']} staged, "
                  f"{summary['rows_rejected']} rejected, {summary['rows_superseded']} superseded "
                  f"in {summary.get('seconds') or 0:.1f}s")
        planted = {f.name for b in batches for f in b.files if f.fatal_fault}
        failed = {f["s3_key"] for s in summaries for f in s["failures"]}
        _report(settings, summaries, time.monotonic() - started)
        if not inline:
            print("\nwhile services run (--keep): celery -A worker.app flower --conf=ops/flowerconfig.py  "
                  "(http://127.0.0.1:5555, with FLOWER_BASIC_AUTH=user:password set), "
                  "indici-ingest serve-health  (http://127.0.0.1:8080/health)")
        if failed == planted and not any(s.get("error") for s in summaries):
            print(f"\nthe {len(failed)} failed file(s) are exactly those with a planted fatal fault: as expected")
            return 0
        print(f"\nUNEXPECTED: failed {sorted(failed - planted)}; planted but not failed {sorted(planted - failed)}; "
              f"run errors {[s.get('error') for s in summaries if s.get('error')]}")
        return 1
    finally:
        if keep:
            print(f"\nservices left running: moto at {endpoint} (pid {moto.pid}); DATABASE_URL={mask_url(url)}")
        else:
            _stop(worker)
            _stop(redis_proc)
            moto.terminate()


def _nightly_via_celery(settings, printer) -> dict:
    """What beat does every night, then wait for the workers to finish it."""
    from worker import orchestration

    run_id = orchestration.enqueue_run(settings, Selection())
    return orchestration.wait_for_run(settings, run_id, timeout=1800, poll=0.5,
                                      progress=orchestration.FileProgress(run_id, printer))


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
            "SELECT extract, column_name, array_agg(DISTINCT v ORDER BY v) FROM etl.dq_results, "
            "jsonb_array_elements_text(detail -> 'values') AS v WHERE check_name = 'unmapped_domain_values' "
            "GROUP BY 1, 2 ORDER BY 1, 2 LIMIT 8"
        ).fetchall()
        if unmapped:
            print("domain values seen but not mapped yet (map them in etl.domain_*):")
        for extract, column, values in unmapped:
            print(f"  {extract}.{column}: {', '.join(values[:8])}{' ...' if len(values) > 8 else ''}")
        core = conn.execute(
            "SELECT count(*) FILTER (WHERE NOT is_current), count(*) FROM core.dim_patient"
        ).fetchone()
        print(f"core.dim_patient: {core[1]} rows, {core[0]} closed SCD2 versions")
        facts = conn.execute(
            "SELECT (SELECT count(*) FROM core.fact_appointment), (SELECT count(*) FROM core.fact_immunisation), "
            "(SELECT count(*) FROM core.fact_invoice), (SELECT count(*) FROM core.dim_patient WHERE is_inferred), "
            "(SELECT count(*) FROM core.dim_patient WHERE NOT nhi_valid)"
        ).fetchone()
        print(f"core facts: {facts[0]} appointments, {facts[1]} immunisations, {facts[2]} invoices; "
              f"{facts[3]} inferred patients, {facts[4]} patient versions with an invalid NHI")
    print(f"total time {seconds:.1f}s")
    print(f"\nDATABASE_URL={mask_url(settings.database_url.get_secret_value())}")  # never a password
    print(
        "look further (with DATABASE_URL set as above):\n"
        "  psql \"$DATABASE_URL\" -c 'SELECT load_run_id, status, summary FROM etl.load_runs'\n"
        "  psql \"$DATABASE_URL\" -c 'SELECT row_number, field_errors FROM etl.rejects_appointments LIMIT 5'\n"
        "  psql \"$DATABASE_URL\" -c 'SELECT * FROM etl.dq_results WHERE NOT passed'\n"
        "  psql \"$DATABASE_URL\" -c 'SELECT patient_id, family_name, effective_from, effective_to, is_current "
        "FROM core.dim_patient ORDER BY patient_id, effective_from LIMIT 20'\n"
        "  indici-ingest trace dim_patient <patient_id> <practice_id> <per_org_id>\n"
        "  indici-ingest health"
    )
