"""The services of the end-to-end benchmark, started the way the demo and the integration tests start them.

- a moto S3 server in server mode (its own process, like `indici-ingest demo`), versioned buckets;
- a Redis database index leased like the integration tests lease theirs (SET NX in database 0 under the
  same `indici-test-lease:<n>` keys), so the benchmark never consumes another session's messages;
- Postgres: one migrated template database, then a fresh copy of it (CREATE DATABASE .. TEMPLATE) for
  every measurement, dropped afterwards, and the project roles of the benchmark's prefix at the end;
- a real Celery worker process of the project's app (`celery -A worker.app worker`), its process tree's
  memory sampled with psutil while it works;
- the project's CLI (`python -m worker.cli backfill --from D --to D --wait`) to start a run and wait.

Everything runs from the checkout the benchmark runs in (its `worker` package), so the benchmark measures
whatever pipeline that checkout holds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.common import ADMIN_URL
from worker.net import free_port, listening

REPO_ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
# Same lease scheme and range as tests/integration/conftest.py (0-5 are left to developers and the demo).
LEASABLE_REDIS_DBS = range(6, 16)
LEASE_SECONDS = 6 * 60 * 60
NHI_KEY = "bench-only-nhi-hmac-key-of-at-least-32-bytes"
REGION = "ap-southeast-2"


# -- memory ------------------------------------------------------------------------------------------
def own_peak_rss_mb() -> float:
    """High-water mark of this process's resident memory (VmHWM)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssSampler:
    """Samples the resident memory of a process and all its descendants every `interval` seconds (psutil).

    `peaks()` gives the highest RSS seen per process (by its role: `main` for the root, `child` for the
    others, each with its pid), the highest sum over the tree at one sample, and the CPU seconds (user +
    system) the tree used since the start or the last `reset()` (as of the last sample)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        import psutil

        self._psutil = psutil
        self.root = psutil.Process(pid)
        self.interval = interval
        self.per_pid: dict[int, float] = {}
        self.tree_peak = 0.0
        self.cpu = CpuTally()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "RssSampler":
        self._thread.start()
        return self

    def sample(self) -> None:
        psutil = self._psutil
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        total = 0.0
        for proc in procs:
            try:
                rss = proc.memory_info().rss / 1e6
                self.cpu.see(proc)
            except psutil.Error:
                continue
            total += rss
            if rss > self.per_pid.get(proc.pid, 0.0):
                self.per_pid[proc.pid] = rss
        self.tree_peak = max(self.tree_peak, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def reset(self) -> None:
        self.per_pid.clear()
        self.tree_peak = 0.0
        self.cpu.reset()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def peaks(self) -> dict[str, Any]:
        children = {pid: mb for pid, mb in self.per_pid.items() if pid != self.root.pid}
        return {
            "main_mb": round(self.per_pid.get(self.root.pid, 0.0), 1),
            "children_mb": {str(pid): round(mb, 1) for pid, mb in sorted(children.items())},
            "max_child_mb": round(max(children.values(), default=0.0), 1),
            "tree_mb": round(self.tree_peak, 1),
            "cpu_seconds": round(self.cpu.seconds(), 2),
        }


class CpuTally:
    """CPU seconds (user + system) of the processes seen since `reset()`: a process that started after the
    reset counts from its start, one that was already running from the reset (or its first sighting)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.since = time.time()
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._lock = threading.Lock()

    def see(self, proc) -> None:  # noqa: ANN001 - a psutil.Process
        times = proc.cpu_times()
        used = times.user + times.system
        with self._lock:
            if proc.pid not in self._first:
                self._first[proc.pid] = 0.0 if proc.create_time() >= self.since else used
            self._last[proc.pid] = used

    def seconds(self) -> float:
        with self._lock:
            return sum(last - self._first.get(pid, 0.0) for pid, last in self._last.items())


class BackendSampler:
    """Peak RSS and CPU seconds of the Postgres backends serving one database (pg_stat_activity, sampled
    with psutil every `interval` seconds from an admin connection to another database). A backend's RSS
    includes the shared buffers it has touched, so it overstates its private memory; the CPU of a backend
    is counted up to its last sample (a backend that lives less than `interval` may be missed)."""

    def __init__(self, database: str, interval: float = 0.5) -> None:
        self.database = database
        self.interval = interval
        self.peak_mb = 0.0
        self.cpu = CpuTally()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        try:
            with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
                while not self._stop.is_set():
                    pids = [r[0] for r in conn.execute(
                        "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.database,))]
                    for pid in pids:
                        try:
                            proc = psutil.Process(pid)
                            self.peak_mb = max(self.peak_mb, proc.memory_info().rss / 1e6)
                            self.cpu.see(proc)
                        except psutil.Error:
                            continue
                    self._stop.wait(self.interval)
        except psycopg.Error:
            return  # sampling is best effort; the measurement itself does not depend on it

    def stop(self) -> tuple[float, float]:
        """(peak RSS MB of one backend, CPU seconds of the backends as last sampled)."""
        self._stop.set()
        self._thread.join(timeout=5)
        return round(self.peak_mb, 1), round(self.cpu.seconds(), 2)


# -- moto --------------------------------------------------------------------------------------------
class Moto:
    """A moto S3 server process (server mode: other processes reach it over HTTP)."""

    def __init__(self, log_dir: Path) -> None:
        port = free_port()
        # moto's server with listings that do not copy every object's bytes (bench/moto_server.py).
        command = [sys.executable, "-m", "bench.moto_server"]
        self._log = open(log_dir / "moto.log", "ab")
        self.proc = subprocess.Popen([*command, "-H", "127.0.0.1", "-p", str(port)],
                                     stdout=self._log, stderr=self._log, cwd=REPO_ROOT)
        self.endpoint = f"http://127.0.0.1:{port}"
        for _ in range(200):
            if listening("127.0.0.1", port):
                break
            time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError(f"the moto S3 server did not start (see {log_dir / 'moto.log'})")
        self.sampler = RssSampler(self.proc.pid, interval=1.0).start()

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id="bench", aws_secret_access_key="bench")

    def new_bucket(self, name: str) -> str:
        s3 = self.client()
        s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    def empty_bucket(self, name: str) -> None:
        s3 = self.client()
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
            objects = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                       for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
            if objects:
                s3.delete_objects(Bucket=name, Delete={"Objects": objects})

    def stop(self) -> None:
        if getattr(self, "sampler", None) is not None:
            self.sampler.stop()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


# -- redis -------------------------------------------------------------------------------------------
@contextmanager
def leased_redis() -> Iterator[str]:
    """A Redis database index of our own (the integration tests' lease scheme), flushed before and after."""
    import redis

    lessor = redis.Redis.from_url(f"{REDIS_URL}/0")
    token = uuid.uuid4().hex
    index = next((i for i in LEASABLE_REDIS_DBS
                  if lessor.set(f"indici-test-lease:{i}", token, nx=True, ex=LEASE_SECONDS)), None)
    if index is None:
        raise RuntimeError("no free Redis database index (6-15 are all leased by test sessions)")
    url = f"{REDIS_URL}/{index}"
    redis.Redis.from_url(url).flushdb()
    try:
        yield url
    finally:
        redis.Redis.from_url(url).flushdb()
        if lessor.get(f"indici-test-lease:{index}") == token.encode():
            lessor.delete(f"indici-test-lease:{index}")


# -- postgres ----------------------------------------------------------------------------------------
def _admin(statement: sql.Composed) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(statement)


class Databases:
    """A migrated template database and fresh copies of it; everything dropped by `close()`."""

    def __init__(self) -> None:
        self.suffix = uuid.uuid4().hex[:8]
        self.role_prefix = f"bench{self.suffix}_"
        self.template = f"indici_bench_{self.suffix}_tpl"
        self.created: list[str] = []
        self._count = 0
        _admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.template)))
        self.created.append(self.template)
        from worker.pipeline.migrate import upgrade
        from worker.settings import Settings

        upgrade(Settings(DATABASE_URL=self.url(self.template), DB_ROLE_PREFIX=self.role_prefix))

    @staticmethod
    def url(name: str) -> str:
        return ADMIN_URL.rsplit("/", 1)[0] + "/" + name

    def fresh(self, tag: str) -> str:
        """A new database copied from the migrated template; returns its name."""
        self._count += 1
        name = f"indici_bench_{self.suffix}_{self._count}_{re.sub(r'[^a-z0-9]', '', tag.lower())[:20]}"
        _admin(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(self.template)))
        self.created.append(name)
        return name

    def drop(self, name: str) -> None:
        _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if name in self.created:
            self.created.remove(name)

    def close(self) -> None:
        for name in list(reversed(self.created)):
            self.drop(name)
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            names = [r[0] for r in conn.execute(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (self.role_prefix,))]
            from worker.io.roles import roles
            from worker.settings import Settings

            group = [r for r in roles(Settings(DB_ROLE_PREFIX=self.role_prefix)).all() if r in names]
            for role in sorted(set(names) - set(group)) + group:  # logins before group roles
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


# -- one environment: database + bucket + broker -------------------------------------------------------
@dataclass
class Target:
    """Where one measurement loads: its database, bucket and broker, as the environment of the worker and
    the CLI (like production: every process reads its settings from the environment)."""

    database: str
    bucket: str
    endpoint: str
    broker: str
    role_prefix: str

    @property
    def database_url(self) -> str:
        return Databases.url(self.database)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.endswith("_FILE")}
        env.update({
            "DATABASE_URL": self.database_url,
            "DB_ROLE_PREFIX": self.role_prefix,
            "S3_BUCKET": self.bucket,
            "S3_ENDPOINT_URL": self.endpoint,
            "S3_PREFIX": "",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": REGION,
            "NHI_HMAC_KEY": NHI_KEY,
            "CELERY_BROKER_URL": self.broker,
            "CELERY_RESULT_BACKEND": self.broker,
            "NOTIFY_URLS": "",
            "PYTHONUNBUFFERED": "1",
        })
        env.pop("MIGRATION_DATABASE_URL", None)
        return env

    def settings(self):
        from worker.settings import Settings

        env = self.env()
        return Settings(**{k: env[k] for k in (
            "DATABASE_URL", "DB_ROLE_PREFIX", "S3_BUCKET", "S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY", "NHI_HMAC_KEY", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")})


# -- celery worker -----------------------------------------------------------------------------------
class Worker:
    """A real Celery worker process of the project's app, with `concurrency` prefork processes."""

    def __init__(self, target: Target, concurrency: int, log_path: Path) -> None:
        from worker.app import make_app

        self.log_path = log_path
        self.node = f"bench-{uuid.uuid4().hex[:8]}"
        celery = Path(sys.executable).with_name("celery")
        command = [str(celery)] if celery.exists() else [sys.executable, "-m", "celery"]
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [*command, "-A", "worker.app", "worker", "--pool=prefork", f"--concurrency={concurrency}",
             "--loglevel=INFO", "-n", f"{self.node}@%h", "--without-gossip", "--without-mingle"],
            env=target.env(), cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        self.client = make_app(target.settings())
        deadline = time.monotonic() + 90
        while not any(self.node in name for reply in self.client.control.ping(timeout=0.5) for name in reply):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the Celery worker did not start:\n{log_path.read_text()[-3000:]}")
        self.sampler = RssSampler(self.proc.pid).start()
        self._log_offset = log_path.stat().st_size
        self.raw_landing_seconds: float | None = None

    def tasks(self, settle: float = 1.0) -> list[dict[str, Any]]:
        """Celery's record of every task logged since the last call (report.task_records): name, state,
        seconds. Waits `settle` seconds first: the last task logs its end just after its commit."""
        from bench.report import raw_landing_seconds, task_records

        time.sleep(settle)
        with open(self.log_path, "rb") as fh:
            fh.seek(self._log_offset)
            text = fh.read().decode("utf-8", "replace")
            self._log_offset = fh.tell()
        lines = text.splitlines()
        self.raw_landing_seconds = raw_landing_seconds(lines)  # of the same lines (see report)
        return task_records(lines)

    def stop(self) -> None:
        if getattr(self, "sampler", None) is not None:
            self.sampler.stop()
        if self.proc.poll() is None:
            self.proc.terminate()  # warm shutdown
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a client must not hide the measurement
            pass


# -- the CLI -----------------------------------------------------------------------------------------
@dataclass
class CliRun:
    returncode: int
    seconds: float
    summary: dict[str, Any]
    peak_rss_mb: float
    output_tail: str = field(repr=False, default="")


def backfill(target: Target, day: date, timeout: float, log_path: Path, progress_prefix: str = "",
             worker: "Worker | None" = None) -> CliRun:
    """`indici-ingest backfill --from DAY --to DAY --wait` as a process; its summary JSON and peak RSS.

    The CLI is killed (and the run reported as not finished) after `timeout` seconds, or as soon as
    `worker`'s process has died: nobody would finish the run then."""
    command = [sys.executable, "-m", "worker.cli", "backfill", "--from", day.isoformat(), "--to", day.isoformat(),
               "--wait"]
    start = time.perf_counter()
    with open(log_path, "ab") as log:  # stderr: the CLI's JSON log lines
        proc = subprocess.Popen(command, env=target.env(), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                stderr=log, text=True)
    sampler = RssSampler(proc.pid).start()
    lines: list[str] = []
    assert proc.stdout is not None
    stopped = threading.Event()
    why: list[str] = []

    def watchdog() -> None:
        deadline = time.monotonic() + timeout
        while not stopped.wait(1.0):
            if time.monotonic() > deadline:
                why.append(f"the run took longer than {timeout:g} s")
            elif worker is not None and worker.proc.poll() is not None:
                why.append(f"the Celery worker died (exit {worker.proc.returncode}; log {worker.log_path})")
            else:
                continue
            proc.kill()
            return

    guard = threading.Thread(target=watchdog, daemon=True)
    guard.start()
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("[") and progress_prefix:
            print(f"{progress_prefix}{line.rstrip()[:160]}", flush=True)
    if why:
        lines.append(f"benchmark: CLI stopped: {why[0]}\n")
    proc.wait()
    stopped.set()
    guard.join(timeout=5)
    seconds = time.perf_counter() - start
    sampler.stop()
    text = "".join(lines)
    summary: dict[str, Any] = {}
    start_at = next((i for i, line in enumerate(lines) if line.rstrip() == "{"), None)
    if start_at is not None:  # the CLI prints the run summary last, as indented JSON
        try:
            summary = json.loads("".join(lines[start_at:]))
        except json.JSONDecodeError:
            summary = {}
    return CliRun(proc.returncode, seconds, summary, sampler.peaks()["main_mb"], text[-4000:])
