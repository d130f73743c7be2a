"""`indici-ingest demo`: the main job end to end on generated data, on a fresh machine.

Services: the configured Postgres (DATABASE_URL), else the local one on 127.0.0.1:5432 (database
`indici_demo`), else an embedded Postgres (pgserver) under .demo/. The database is created when it is
missing (and marked as the demo's with a comment); an existing one is used as it is, and the demo says
what it found there. `--fresh` drops and recreates it first, only when the demo created it: the demo
never drops a database it did not create. Redis: the configured one (CELERY_BROKER_URL), else the local
one on 127.0.0.1:6379 (database 5), else a redis-server started for the demo; a moto S3 server in server
mode with a versioned bucket; a real Celery worker process. `--external` starts nothing: it uses the
configured bucket and workers (the compose stack's demo profile).

The generator writes a full batch and two weekly deltas (the last one a few days ago, so health judges
them fresh) with a few planted faults, and each batch is loaded by the nightly run as it "arrives",
like three real nights. `--inline` runs the same steps without Celery. The summary names the planted
faults as the pipeline saw them, and suggests only queries and commands that return something.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from worker.net import free_port, listening
from worker.pipeline.nztime import NZ
from worker.pipeline.run import Selection
from worker.redact import mask_url

DEMO_DIR = Path(".demo")
DEMO_DB = "indici_demo"
BUCKET = "poutiri-datacraft-data"
DEMO_MARK = "created by indici-ingest demo"
DEMO_FAULTS = {"bad_timestamp": 2, "missing_required": 2, "unknown_domain_value": 2, "duplicate_key": 1,
               "nasty_text": 3, "wrong_field_count": 1}


class DemoDatabaseError(RuntimeError):
    """The demo will not touch this database (exit 2)."""


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def _ensure_database(url: str, fresh: bool) -> str:
    """Create the database of `url` when missing (marked as the demo's); with `fresh`, drop and recreate
    it first, but only when the demo created it. Returns what was done, for the summary."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = _with_database(url, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                           (name,)).fetchone()
        if row is not None and fresh:
            if row[0] != DEMO_MARK:
                raise DemoDatabaseError(
                    f"demo --fresh: database {name!r} was not created by the demo, so it is not dropped; drop it "
                    "yourself or point DATABASE_URL at another database")
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            row = None
            done = "dropped and created again (--fresh)"
        else:
            done = "created"
        if row is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(DEMO_MARK)))
            return done
    return "existing, used as it is"


def _database_url(fresh: bool = False) -> tuple[str, str]:
    """(url, where) of the demo database, created when missing."""
    if os.environ.get("DATABASE_URL") or os.environ.get("DATABASE_URL_FILE"):
        from worker.settings import get_settings

        url = get_settings().database_url.get_secret_value()  # DATABASE_URL or DATABASE_URL_FILE
        where = "configured DATABASE_URL"
    elif listening("127.0.0.1", 5432):
        url = f"postgresql://127.0.0.1:5432/{DEMO_DB}"
        where = "local Postgres on 127.0.0.1:5432"
    else:
        import pgserver  # embedded Postgres, only needed where none is running

        server = pgserver.get_server(DEMO_DIR / "pgdata", cleanup_mode=None)
        url = _with_database(server.get_uri(), DEMO_DB)
        where = f"embedded Postgres (pgserver) in {DEMO_DIR / 'pgdata'}"
    done = _ensure_database(url, fresh)
    return url, f"{where}, database {urlsplit(url).path.lstrip('/')} ({done})"


def demo_start(now: datetime | None = None) -> datetime:
    """DateExtracted of the demo's full batch (NZ local): ten days before the last Sunday, so its two
    weekly deltas fall on the two Sundays before today and the newest is less than a week old."""
    today = (now or datetime.now(NZ)).date()
    last_sunday = today - timedelta(days=(today.weekday() + 1) % 7 or 7)
    full = last_sunday - timedelta(days=10)
    return datetime(full.year, full.month, full.day, 8, 50)


def _start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    command = [str(moto)] if moto.exists() else [sys.executable, "-m", "moto.server"]
    DEMO_DIR.mkdir(exist_ok=True)
    log = open(DEMO_DIR / "moto.log", "ab")
    proc = subprocess.Popen([*command, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    for _ in range(100):
        if listening("127.0.0.1", port):
            return proc, f"http://127.0.0.1:{port}"
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the moto S3 server did not start (see .demo/moto.log)")


def _redis_url() -> tuple[str, str, subprocess.Popen | None]:
    """(broker url, where, process we started or None)."""
    if os.environ.get("CELERY_BROKER_URL"):
        return os.environ["CELERY_BROKER_URL"], "configured CELERY_BROKER_URL", None
    if listening("127.0.0.1", 6379):
        return "redis://127.0.0.1:6379/5", "local Redis on 127.0.0.1:6379, database 5", None
    port = free_port()
    DEMO_DIR.mkdir(exist_ok=True)
    proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if listening("127.0.0.1", port):
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


def run_demo(patients: int = 300, keep: bool = False, inline: bool = False, fresh: bool = False,
             external: bool = False) -> int:
    from worker.io.db import connect
    from worker.io.s3 import make_client
    from worker.pipeline.migrate import upgrade
    from worker.pipeline.run import run_inline
    from worker.progress import for_settings
    from worker.settings import Settings, get_settings
    from worker.synth import build_series, write_s3

    started = time.monotonic()
    _section("services")
    moto = redis_proc = worker = None
    try:
        url, where = _database_url(fresh)
    except DemoDatabaseError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(f"Postgres: {where}")
    env = {"DATABASE_URL": url}
    if external:
        endpoint = os.environ.get("S3_ENDPOINT_URL") or "AWS S3"
        print(f"S3: the configured bucket at {endpoint}; Celery: the configured workers")
    else:
        moto, endpoint = _start_moto()
        print(f"S3: moto server at {endpoint}, bucket {BUCKET} (versioned)")
        env.update({"S3_ENDPOINT_URL": endpoint, "S3_BUCKET": BUCKET,
                    "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "demo"),
                    "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "demo")})
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
        _ensure_bucket(s3, settings)
        upgrade(settings)
        print("schema migrated (raw, stg, etl, core)")
        with connect(settings) as conn:
            found = _what_is_there(conn)
        if found:
            print(f"found: {found}")
        if not inline and not external:
            worker = _start_worker()
            print(f"Celery worker started (pid {worker.pid}; log in {DEMO_DIR / 'worker.log'})")

        _section("generated extracts")
        t0 = time.monotonic()
        batches = build_series(seed=7, patients=patients, deltas=2, faults=DEMO_FAULTS, start=demo_start())
        print(f"{sum(len(b.files) for b in batches)} files in {len(batches)} batches "
              f"({patients} patients per practice, 2 practices) in {time.monotonic() - t0:.1f}s; "
              f"planted faults: {', '.join(f'{k} x{v}' for k, v in DEMO_FAULTS.items())}")

        summaries = []
        for batch in batches:
            _section(f"night {batch.index + 1}: {batch.kind} batch extracted {batch.date_extracted:%Y-%m-%d %H:%M}")
            write_s3(batch.files, settings.s3_bucket, settings.s3_prefix, s3)
            if inline:
                with connect(settings) as conn, for_settings(settings) as shown:
                    summary = run_inline(conn, s3, settings, Selection(), progress=shown)
            else:
                summary = _nightly_via_celery(settings)
            summaries.append(summary)
            print(f"run {summary['load_run_id']}: {summary['status']} - {summary['files']} files, "
                  f"{summary['rows_read']} rows read, {summary['rows_staged']} staged, "
                  f"{summary['rows_rejected']} rejected, {summary['rows_superseded']} superseded "
                  f"in {summary.get('seconds') or 0:.1f}s")
        planted = {f.name for b in batches for f in b.files if f.fatal_fault}
        failed = {f["s3_key"].rsplit("/", 1)[-1] for s in summaries for f in s["failures"]}
        _report(settings, batches, summaries, time.monotonic() - started)
        if not inline and not external:
            print("\nwhile services run (--keep): celery -A worker.app flower --conf=ops/flowerconfig.py  "
                  "(http://127.0.0.1:5555, with FLOWER_BASIC_AUTH=user:password set), "
                  "indici-ingest serve-health  (http://127.0.0.1:8080/health)")
        if failed == planted and not any(s.get("error") for s in summaries):
            print(f"\nthe {len(failed)} failed file(s) are exactly those with a planted fatal fault: as expected")
            return 0
        if found and not failed and not any(s.get("error") for s in summaries):
            print("\nnothing failed this time: the planted broken files had been seen before (see 'found' above)")
            return 0
        print(f"\nUNEXPECTED: failed {sorted(failed - planted)}; planted but not failed {sorted(planted - failed)}; "
              f"run errors {[s.get('error') for s in summaries if s.get('error')]}")
        return 1
    finally:
        if keep and moto is not None:
            print(f"\nservices left running: moto at {endpoint} (pid {moto.pid}); DATABASE_URL={mask_url(url)}")
        else:
            _stop(worker)
            _stop(redis_proc)
            if moto is not None:
                moto.terminate()


def _ensure_bucket(s3, settings) -> None:
    """The bucket, versioned (it may exist already: --external, or a re-run against the same S3)."""
    try:
        s3.create_bucket(Bucket=settings.s3_bucket,
                         CreateBucketConfiguration={"LocationConstraint": settings.aws_region})
    except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
        pass
    s3.put_bucket_versioning(Bucket=settings.s3_bucket, VersioningConfiguration={"Status": "Enabled"})


def _what_is_there(conn: psycopg.Connection) -> str | None:
    """What an earlier demo (or anything else) left in the database, in one line; None when empty."""
    runs, last = conn.execute("SELECT count(*), max(started_at) FROM etl.load_runs").fetchone()
    if not runs:
        return None
    files = conn.execute("SELECT status, count(*) FROM etl.load_run_files GROUP BY 1 ORDER BY 1").fetchall()
    patients = conn.execute("SELECT count(*) FROM core.dim_patient").fetchone()[0]
    by_status = ", ".join(f"{n} {status}" for status, n in files) or "no files"
    return (f"{runs} earlier runs (the last started {last.astimezone(NZ):%Y-%m-%d %H:%M %z}), files {by_status}, "
            f"{patients} rows in core.dim_patient. Loading again is safe: a file version already loaded is "
            "skipped, the same bytes under a new version are recorded as a duplicate, and the nightly run only "
            "takes batches from the newest one loaded on.")


def _nightly_via_celery(settings) -> dict:
    """What beat does every night, then wait for the workers to finish it (live progress at a terminal)."""
    from worker import orchestration
    from worker.progress import RunProgress

    run_id = orchestration.enqueue_run(settings, Selection())
    with RunProgress(run_id) as shown:
        return orchestration.wait_for_run(settings, run_id, timeout=1800, poll=0.5,
                                          progress=shown)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Suggestion:
    kind: str  # sql | cli
    text: str

    def line(self) -> str:
        return f"  psql \"$DATABASE_URL\" -c \"{self.text}\"" if self.kind == "sql" else f"  {self.text}"


def _returns_rows(conn: psycopg.Connection, query: str) -> bool:
    return conn.execute(sql.SQL("SELECT EXISTS ({})").format(sql.SQL(query))).fetchone()[0]  # type: ignore[arg-type]


def suggestions(conn: psycopg.Connection) -> list[Suggestion]:
    """Where to look next: only queries that return rows and commands that have something to show."""
    out = [Suggestion("sql", "SELECT load_run_id, kind, status, summary ->> 'files' AS files, "
                             "summary ->> 'rows_read' AS rows_read FROM etl.load_runs ORDER BY load_run_id")]
    failed = "SELECT file_id, s3_key, error FROM etl.load_run_files WHERE status = 'failed' ORDER BY file_id"
    if _returns_rows(conn, failed):
        out.append(Suggestion("sql", failed))
    from contracts import naming
    from contracts.registry import load_all

    counts = []
    for spec in load_all().values():
        n = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(naming.ETL, naming.rejects_table(spec)))).fetchone()[0]
        if n:
            counts.append((n, spec.extract))
    if counts:
        out.append(Suggestion("cli", f"indici-ingest rejects --extract {max(counts)[1]}"))
    checks = "SELECT extract, check_name, column_name, observed, threshold FROM etl.dq_results WHERE NOT passed"
    if _returns_rows(conn, checks):
        out.append(Suggestion("sql", checks))
    key = conn.execute("SELECT patient_id, practice_id, per_org_id FROM core.dim_patient WHERE NOT is_current "
                       "ORDER BY patient_id LIMIT 1").fetchone()
    if key is not None:
        out.append(Suggestion("sql", "SELECT patient_id, effective_from, effective_to, is_current "
                                     "FROM core.dim_patient "
                                     f"WHERE patient_id = {int(key[0])} AND practice_id = {int(key[1])} "
                                     f"AND per_org_id = {int(key[2])} ORDER BY effective_from"))
        out.append(Suggestion("cli", f"indici-ingest trace dim_patient {int(key[0])} {int(key[1])} {int(key[2])}"))
    out.append(Suggestion("cli", "indici-ingest domains list"))
    out.append(Suggestion("cli", "indici-ingest health"))
    return out


def new_domain_values(conn: psycopg.Connection) -> list[tuple[str, str, str, str]]:
    """(domain, extract.column(s), value, file) of values not mapped that first appeared after the first
    batch: values the columns had not held before, e.g. a code the provider introduced (or a planted one)."""
    from contracts import naming
    from worker.pipeline.operator import domain_columns

    found = []
    for domain, columns in domain_columns().items():
        rows = conn.execute(sql.SQL(
            "SELECT d.value, f.extract, f.s3_key FROM {} d "
            "JOIN etl.load_run_files f ON f.file_id = d.first_seen_file_id "
            "WHERE NOT d.is_mapped AND f.date_extracted > (SELECT min(date_extracted) FROM etl.load_run_files g "
            "WHERE g.extract = f.extract) ORDER BY d.value").format(
            sql.Identifier(naming.ETL, naming.domain_table(domain)))).fetchall()
        for value, extract, key in rows:
            where = ", ".join(c for c in columns if c.startswith(extract + "."))
            found.append((domain, where, value, key))
    return found


def _report(settings, batches, summaries: list[dict], seconds: float) -> None:
    from worker.health_http import health_response
    from worker.io.db import connect
    from worker.pipeline.operator import domain_coverage

    _section("summary")
    run_ids = [s["load_run_id"] for s in summaries]
    planted_values = {(f.extract, fault.column, fault.value) for b in batches for f in b.files for fault in f.faults
                      if fault.kind == "unknown_domain_value"}
    with connect(settings) as conn:
        files = conn.execute(
            "SELECT status, count(*), coalesce(sum(rows_read), 0), coalesce(sum(rows_staged), 0), "
            "coalesce(sum(rows_rejected), 0) FROM etl.load_run_files GROUP BY status ORDER BY status"
        ).fetchall()
        print("files by status (whole database):")
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
            "SELECT s3_key, error FROM etl.load_run_files WHERE status = 'failed' AND load_run_id = ANY(%s) "
            "ORDER BY file_id", (run_ids,)
        ).fetchall()
        for key, error in failed:
            print(f"failed file: {error}")
        anomalies = [a for s in summaries for a in s.get("anomalies") or []]
        print(f"anomalies against the baseline of recent loads: {len(anomalies) or 'none'}"
              + ("" if anomalies else " (a baseline needs 3 earlier loads of an extract)"))
        for a in anomalies:
            print(f"  run {a['load_run_id']}: {a['message']}")
        coverage = domain_coverage(conn)
        total = sum(d["values"] for d in coverage)
        mapped = sum(d["mapped"] for d in coverage)
        print(f"domain values: {total} seen in {sum(1 for d in coverage if d['values'])} domains, {mapped} mapped "
              "(documented codes); the rest wait for a label (indici-ingest domains list)")
        new = new_domain_values(conn)
        if new:
            print("new values, not mapped, first seen after the first batch:")
        for domain, where, value, key in new:
            extract = where.split(".", 1)[0]
            mark = "  <- the planted unknown_domain_value" if any(
                (extract, col.split(".", 1)[1], value) in planted_values for col in where.split(", ")) else ""
            print(f"  {where} = {value!r} (domain {domain}, first in {key}){mark}")
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
        look = suggestions(conn)
    status, health = health_response(settings)
    print(f"health: {health['status']} (HTTP {status}), {len(health.get('problems', []))} problems, "
          f"{len(health.get('warnings', []))} warnings")
    for problem in health.get("problems", [])[:5]:
        print(f"  problem: {problem}")
    print(f"total time {seconds:.1f}s")
    print(f"\nDATABASE_URL={mask_url(settings.database_url.get_secret_value())}")  # never a password
    print("look further (with DATABASE_URL set as above):")
    for suggestion in look:
        print(suggestion.line())
