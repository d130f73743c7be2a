"""End-to-end benchmark: generated extracts from moto S3 through the real Celery path to core, in one run
with a bare Postgres COPY of the same rows (baseline) and dlt 1.31 merging the same rows (comparison).

    make bench                                   # python -m bench.e2e (100k, 1M, 5M rows)
    python -m bench.e2e --quick                  # a 20k-row smoke run (a few minutes)
    python -m bench.e2e --sizes 100k,1M --repeats 3

For each size: one generated Appointments file (worker/synth, contract-driven, seeded, real-format
UTF-16LE) is put in a versioned bucket of a moto S3 server; for each repeat a fresh database (a copy of a
migrated template, dropped afterwards) gets a real Celery worker process of the project's app (2 pool
processes) and the project's CLI runs `backfill --from D --to D --wait` for the file's day. Measured:
the run's seconds from etl.load_runs (started_at -> finished_at), the seconds of each stage's Celery
tasks from the worker log, the ledger's timestamps, peak RSS of every process and the CPU seconds of the
worker and of the run's Postgres backends (psutil). Then, in the same
database and with the worker stopped: bare COPY of the same rows (the COPY text raw landing writes,
prepared in advance) into an all-text table, and dlt 1.31 merging the same rows (parsed in advance) on
the contract's natural key, in its own process.

Then a multi-file batch (--files files of --file-rows rows, one per practice) loaded with 1 and with 2
worker processes, and --weeks weekly full Patients files (the generator's population, evolving by its
weekly change rate) loaded one run per week, the merge time of the last week against the first.

Medians of --repeats runs (default 3 for sizes up to 1M rows, 1 above). Writes bench/results/e2e.json,
e2e.md and e2e.png (--quick: e2e-quick.*) and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import psycopg

from bench import report as R
from bench.common import bare_copy_seconds, plain_rows, write_copy_text, write_plain_copy_text
from bench.stack import (
    REPO_ROOT,
    BackendSampler,
    Databases,
    Moto,
    Target,
    Worker,
    backfill,
    leased_redis,
    own_peak_rss_mb,
)

RESULTS = Path(__file__).resolve().parent / "results"
APPOINTMENTS_DAY = datetime(2025, 8, 19, 8, 50)  # DateExtracted of the generated Appointments files
_T0 = time.monotonic()


def say(message: str) -> None:
    elapsed = int(time.monotonic() - _T0)
    print(f"[bench {elapsed // 3600:d}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d}] {message}", flush=True)


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    dbs: Databases
    moto: Moto
    broker: str
    notes: list[str] = field(default_factory=list)

    def target(self, database: str, bucket: str) -> Target:
        return Target(database, bucket, self.moto.endpoint, self.broker, self.dbs.role_prefix)


# -- one run through the Celery path -----------------------------------------------------------------
def _ledger(url: str, run_id: int | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with psycopg.connect(url) as conn:
        if run_id is None:
            run_id = conn.execute("SELECT max(load_run_id) FROM etl.load_runs").fetchone()[0]
        row = conn.execute("SELECT load_run_id, status, started_at, finished_at, summary FROM etl.load_runs "
                           "WHERE load_run_id = %s", (run_id,)).fetchone()
        if row is None:
            raise RuntimeError(f"no run {run_id} in etl.load_runs")
        run = dict(zip(("load_run_id", "status", "started_at", "finished_at", "summary"), row))
        stamps = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'etl' "
            "AND table_name = 'load_run_files' AND data_type = 'timestamp with time zone' "
            "AND column_name LIKE '%%\\_at' AND column_name NOT IN ('updated_at', 's3_last_modified') "
            "ORDER BY ordinal_position")]
        columns = ["file_id", "status", "rows_read", "rows_staged", "rows_rejected", "s3_size", *stamps]
        from psycopg import sql

        cur = conn.execute(sql.SQL("SELECT {} FROM etl.load_run_files WHERE load_run_id = %s ORDER BY file_id").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in columns)), (run_id,))
        files = [dict(zip(columns, r)) for r in cur.fetchall()]
    return run, files


def measure_run(bench: Bench, target: Target, worker: Worker, day: date, expected_rows: int,
                label: str) -> dict[str, Any]:
    """One `backfill --wait` of `day` through the worker; the run's numbers. Raises when the run did not
    load every row (a benchmark of a broken load measures nothing)."""
    bench.moto.sampler.reset()
    worker.sampler.reset()
    backends = BackendSampler(target.database)
    try:
        cli = backfill(target, day, bench.args.timeout, bench.work / "cli.log",
                       progress_prefix="    " if bench.args.verbose else "", worker=worker)
    finally:
        postgres_mb, postgres_cpu = backends.stop()
    tasks = worker.tasks()
    run, files = _ledger(target.database_url, cli.summary.get("load_run_id"))
    rows_read = sum(f["rows_read"] or 0 for f in files)
    if cli.returncode != 0 or run["status"] != "succeeded" or rows_read != expected_rows:
        raise RuntimeError(f"{label}: the run did not load every row (exit {cli.returncode}, status "
                           f"{run['status']}, rows read {rows_read} of {expected_rows}); CLI output:\n"
                           f"{cli.output_tail}\nworker log: {worker.log_path}")
    seconds = (run["finished_at"] - run["started_at"]).total_seconds()
    peaks = worker.sampler.peaks()
    stages = R.stage_seconds(tasks)
    stages["raw_landing"] = worker.raw_landing_seconds
    rejected = sum(f["rows_rejected"] or 0 for f in files)
    say(f"{label}: {seconds:.2f} s S3 -> core ({rows_read:,} rows, {rejected:,} rejected), stages "
        + ", ".join(f"{k} {R.fmt(stages.get(k))}" for k in R.STAGES) + f" (raw landing {R.fmt(stages['raw_landing'])})"
        + f"; worker RSS main {peaks['main_mb']:.0f} MB, process {peaks['max_child_mb']:.0f} MB; CPU s worker "
        + f"{peaks['cpu_seconds']:.1f}, postgres {postgres_cpu:.1f}")
    return {
        "seconds": seconds, "cli_seconds": cli.seconds, "rows_read": rows_read, "rows_rejected": rejected,
        "files": len(files), "stages": stages, "ledger_marks": R.ledger_marks(run, files),
        "tasks": [{"name": t["name"], "state": t["state"], "seconds": t["seconds"]} for t in tasks],
        "rss": {"worker_main_mb": peaks["main_mb"], "worker_child_mb": peaks["max_child_mb"],
                "worker_tree_mb": peaks["tree_mb"], "cli_mb": cli.peak_rss_mb,
                "moto_mb": bench.moto.sampler.peaks()["tree_mb"], "postgres_backend_mb": postgres_mb},
        "cpu": {"worker_s": peaks["cpu_seconds"], "postgres_s": postgres_cpu},
    }


# -- inputs ------------------------------------------------------------------------------------------
def _appointments(rows: int, seed: int, folder: Path, practice: tuple[int, int] = (685146, 535)):
    from contracts.registry import get as get_spec
    from worker.synth.writer import generate_extract

    folder.mkdir(parents=True, exist_ok=True)
    return generate_extract(get_spec("Appointments"), rows, seed=seed, out=folder, practice=practice,
                            date_extracted=APPOINTMENTS_DAY)


def write_arrow(spec, source: Path, out: Path, batch_rows: int = 50_000) -> int:
    """The file's rows parsed into an Arrow IPC file of text columns (dlt's input); returns the rows."""
    import pyarrow as pa

    names = spec.column_names
    schema = pa.schema([(n, pa.string()) for n in names])
    try:  # the project's reader; its plain stand-in if the reader's interface has changed
        from worker.io.indici_reader import IndiciReader, iter_file_chunks

        rows = IndiciReader(iter_file_chunks(source), spec.field_count).rows()
    except (ImportError, AttributeError, TypeError):
        rows = plain_rows(source, spec.field_count)
    total = 0
    with pa.OSFile(str(out), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        batch: list[list[str]] = []

        def flush() -> None:
            columns = list(zip(*batch))
            writer.write_batch(pa.record_batch([pa.array(c, pa.string()) for c in columns], schema=schema))
            batch.clear()

        for row in rows:
            batch.append(row)
            total += 1
            if len(batch) >= batch_rows:
                flush()
        if batch:
            flush()
    return total


def run_dlt(bench: Bench, target: Target, spec, arrow: Path, dataset: str) -> dict[str, Any]:
    with psycopg.connect(target.database_url) as conn:
        user, host, port = conn.info.user, conn.info.host, conn.info.port
    # dlt insists on a password; the benchmark's Postgres trusts local connections, so any will do.
    password = os.environ.get("BENCH_DLT_PASSWORD", "unused")
    url = f"postgresql://{user}:{password}@{host}:{port}/{target.database}"
    pipelines = bench.work / "dlt-pipelines"
    env = {**os.environ, "RUNTIME__DLTHUB_TELEMETRY": "false", "RUNTIME__LOG_LEVEL": "WARNING"}
    out = subprocess.run(
        [sys.executable, "-m", "bench.dlt_merge", str(arrow), "--url", url, "--table", spec.extract.lower(),
         "--key", ",".join(spec.natural_key), "--dataset", dataset, "--pipelines-dir", str(pipelines)],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=bench.args.timeout)
    if out.returncode != 0:
        raise RuntimeError(f"dlt failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    shutil.rmtree(pipelines, ignore_errors=True)
    return result


# -- the measurements --------------------------------------------------------------------------------
def bench_size(bench: Bench, rows: int) -> dict[str, Any]:
    from contracts.registry import get as get_spec
    from worker.pipeline import ledger

    spec = get_spec("Appointments")
    repeats = R.default_repeats(rows, bench.args.repeats)
    folder = bench.work / f"size-{rows}"
    say(f"size {R.fmt_rows(rows)}: generating {rows:,} Appointments rows")
    generated = _appointments(rows, seed=1, folder=folder)
    mb = generated.bytes / 1e6
    say(f"size {R.fmt_rows(rows)}: {mb:,.1f} MB UTF-16LE in {generated.seconds:.1f} s; uploading to moto")
    bucket = bench.moto.new_bucket(f"bench-size-{rows}")
    bench.moto.client().upload_file(str(generated.path), bucket, generated.name)
    arrow = None
    if not bench.args.skip_dlt:
        arrow = folder / "rows.arrow"
        t = time.perf_counter()
        write_arrow(spec, generated.path, arrow)
        say(f"size {R.fmt_rows(rows)}: rows parsed for dlt in {time.perf_counter() - t:.1f} s (not timed)")
    copy_file = folder / "copy.txt"
    plain_copy = False
    runs: list[dict[str, Any]] = []
    copy_s: list[float] = []
    dlt_s: list[float | None] = []
    dlt_rss: list[float | None] = []
    dlt_formats: set[str] = set()
    for r in range(repeats):
        label = f"size {R.fmt_rows(rows)} run {r + 1}/{repeats}"
        database = bench.dbs.fresh(f"s{rows}r{r}")
        try:
            target = bench.target(database, bucket)
            worker = Worker(target, bench.args.concurrency, bench.work / f"worker-size-{rows}-{r}.log")
            try:
                runs.append(measure_run(bench, target, worker, APPOINTMENTS_DAY.date(), rows, label))
            finally:
                worker.stop()
            with psycopg.connect(target.database_url) as conn:
                if not copy_file.exists():
                    file_id = conn.execute("SELECT min(file_id) FROM etl.load_run_files").fetchone()[0]
                    try:  # exactly the lines raw landing writes
                        write_copy_text(spec, ledger.get(conn, file_id), generated.path, copy_file)
                    except (ImportError, AttributeError, TypeError) as exc:
                        plain_copy = True
                        bench.notes.append(f"bare COPY at {R.fmt_rows(rows)}: the landing's COPY helpers are not "
                                           f"usable here ({type(exc).__name__}: {exc}), so the baseline copies "
                                           "the file's rows with row numbers and no lineage")
                        write_plain_copy_text(spec, generated.path, copy_file)
                    conn.commit()
                    generated.path.unlink()  # in moto, parsed for dlt and as COPY text: not needed again
                copy_s.append(bare_copy_seconds(conn, spec, copy_file, plain=plain_copy))
            say(f"{label}: bare COPY {copy_s[-1]:.2f} s")
            if arrow is not None:
                result = run_dlt(bench, target, spec, arrow, f"dlt_bench_{r}")
                if result["rows"] != rows:
                    raise RuntimeError(f"dlt left {result['rows']} rows, not {rows}")
                dlt_s.append(result["seconds"])
                dlt_rss.append(result["peak_rss_mb"])
                dlt_formats.update(result.get("file_formats") or [])
                say(f"{label}: dlt merge {result['seconds']:.2f} s (RSS {result['peak_rss_mb']:.0f} MB, "
                    f"load files {', '.join(result.get('file_formats') or ['?'])})")
        finally:
            bench.dbs.drop(database)
    bench.moto.empty_bucket(bucket)
    shutil.rmtree(folder, ignore_errors=True)
    e2e = R.summary([x["seconds"] for x in runs])
    copy = R.summary(copy_s)
    dlt = R.summary(dlt_s) if dlt_s else None
    stages: dict[str, Any] = {k: R.median(x["stages"].get(k) for x in runs) for k in (*R.STAGES, "raw_landing")}
    other_names = sorted({k for x in runs for k in x["stages"]["other"]})
    stages["other"] = {k: R.median(x["stages"]["other"].get(k) for x in runs) for k in other_names}
    marks = sorted({k for x in runs for k in x["ledger_marks"]})
    rss = {k: R.median(x["rss"][k] for x in runs) for k in runs[0]["rss"]}
    rss["dlt_mb"] = R.median(dlt_rss)
    rss["bench_mb"] = own_peak_rss_mb()
    cpu = {k: R.median(x["cpu"][k] for x in runs) for k in runs[0]["cpu"]}
    return {
        "rows": rows, "bytes": generated.bytes, "repeats": repeats, "e2e": e2e, "copy": copy, "dlt": dlt,
        "cli": R.summary([x["cli_seconds"] for x in runs]), "dlt_load_files": sorted(dlt_formats),
        "x_copy": R.speed_ratio(copy["median"], e2e["median"]),
        "x_dlt": R.speed_ratio(dlt["median"] if dlt else None, e2e["median"]),
        "stages": stages,
        "ledger_marks": {k: R.median(x["ledger_marks"].get(k) for x in runs) for k in marks},
        "rss": rss, "cpu": cpu, "runs": runs,
    }


def bench_multi(bench: Bench) -> dict[str, Any]:
    files, per_file = bench.args.files, bench.args.file_rows
    repeats = R.default_repeats(files * per_file, bench.args.repeats)
    folder = bench.work / "multi"
    bucket = bench.moto.new_bucket("bench-multi")
    say(f"multi-file: generating {files} Appointments files x {per_file:,} rows (one per practice)")
    s3 = bench.moto.client()
    for i in range(files):
        generated = _appointments(per_file, seed=100 + i, folder=folder, practice=(685146, 535 + i))
        s3.upload_file(str(generated.path), bucket, generated.name)
        generated.path.unlink()
    shutil.rmtree(folder, ignore_errors=True)
    seconds: dict[str, list[float]] = {"1": [], "2": []}
    runs = []
    for r in range(repeats):
        for workers in (1, 2):
            label = f"multi-file {workers} worker process{'es' if workers > 1 else ''} run {r + 1}/{repeats}"
            database = bench.dbs.fresh(f"m{workers}r{r}")
            try:
                target = bench.target(database, bucket)
                worker = Worker(target, workers, bench.work / f"worker-multi-{workers}-{r}.log")
                try:
                    result = measure_run(bench, target, worker, APPOINTMENTS_DAY.date(), files * per_file, label)
                finally:
                    worker.stop()
            finally:
                bench.dbs.drop(database)
            seconds[str(workers)].append(result["seconds"])
            runs.append({"workers": workers, **result})
    bench.moto.empty_bucket(bucket)
    workers_summary = {k: R.summary(v) for k, v in seconds.items()}
    return {"files": files, "rows_per_file": per_file, "rows": files * per_file, "repeats": repeats,
            "workers": workers_summary,
            "scaling": R.speed_ratio(workers_summary["1"]["median"], workers_summary["2"]["median"]),
            "runs": runs}


def weekly_files(weeks: int, patients: int, folder: Path, seed: int = 11) -> list[tuple[Path, date, int]]:
    """Full Patients files for `weeks` consecutive weeks: the generator's population (worker/synth)
    evolving by its weekly deltas (its change rate: some patients change a tracked attribute, a few
    register), each week's file holding every current patient. Returns (path, DateExtracted day, rows)."""
    from contracts.registry import get as get_spec
    from worker.synth import values as V
    from worker.synth.batches import DEFAULT_START, batch_windows
    from worker.synth.population import Population, Window, load_specs
    from worker.synth.writer import GeneratedFile

    spec = get_spec("Patients")
    practice = (685146, 535)
    folder.mkdir(parents=True, exist_ok=True)
    population = Population(load_specs(), [practice], patients, seed)
    out = []
    for week, (date_from, date_to, extracted) in enumerate(batch_windows(seed, DEFAULT_START, weeks - 1)):
        hi = V.to_secs(date_to)
        window = Window(V.to_secs(date_from), hi, V.fmt_ts(hi - 120, ".350"))
        if week == 0:
            population.full(window)
        else:
            population.delta(window)
        rows = population.rows("Patients", practice)
        f = GeneratedFile(extract="Patients", per_org_id=practice[0], practice_id=practice[1], date_from=date_from,
                          date_to=date_to, date_extracted=extracted, token=spec.file_tokens[0],
                          field_count=spec.field_count, rows=rows, kind="full")
        path = folder / f.name
        path.write_bytes(f.encode())
        out.append((path, extracted.date(), len(rows)))
    return out


def bench_weekly(bench: Bench) -> dict[str, Any]:
    weeks, patients = bench.args.weeks, bench.args.patients
    repeats = R.default_repeats(patients, bench.args.repeats if bench.args.repeats is not None
                                else bench.args.weekly_repeats)
    say(f"weekly: generating {weeks} weekly full Patients files ({patients:,} patients at week 1)")
    files = weekly_files(weeks, patients, bench.work / "weekly")
    merge: list[list[float | None]] = []
    e2e: list[list[float]] = []
    rss: list[list[float | None]] = []  # the busiest worker pool process of each week's run
    for r in range(repeats):
        database = bench.dbs.fresh(f"w{r}")
        bucket = bench.moto.new_bucket(f"bench-weekly-{r}")
        s3 = bench.moto.client()
        try:
            target = bench.target(database, bucket)
            worker = Worker(target, bench.args.concurrency, bench.work / f"worker-weekly-{r}.log")
            try:
                merge.append([])
                e2e.append([])
                rss.append([])
                for week, (path, day, rows) in enumerate(files, start=1):
                    s3.upload_file(str(path), bucket, path.name)
                    result = measure_run(bench, target, worker, day, rows,
                                         f"weekly run {r + 1}/{repeats} week {week}/{weeks}")
                    merge[-1].append(result["stages"].get("merge"))
                    e2e[-1].append(result["seconds"])
                    rss[-1].append((result.get("rss") or {}).get("worker_child_mb"))
            finally:
                worker.stop()
        finally:
            bench.dbs.drop(database)
            bench.moto.empty_bucket(bucket)
    shutil.rmtree(bench.work / "weekly", ignore_errors=True)
    merge_median = [R.median(run[w] for run in merge) for w in range(weeks)]
    first, last = merge_median[0], merge_median[-1]
    week_rows = [n for _, _, n in files]
    ratio = R.speed_ratio(last, first)  # last / first: >1 = the last merge is slower
    from worker.synth import population

    return {"weeks": weeks, "patients": patients, "rows": week_rows, "repeats": repeats,
            "change_rate": {"updated": population.DELTA_UPDATE_DIM, "new": population.DELTA_NEW_DIM},
            "source": "Celery merge task runtimes",
            "merge_runs": merge, "merge_median": [None if m is None else round(m, 4) for m in merge_median],
            "e2e_median": [R.median(run[w] for run in e2e) for w in range(weeks)],
            "worker_child_mb": [R.largest(run[w] for run in rss) for w in range(weeks)],
            "ratio": ratio,
            "ratio_per_row": (ratio * week_rows[0] / week_rows[-1]) if ratio else None}


# -- main --------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100k,1M,5M", help="Appointments rows per size, comma-separated (100k,1M)")
    p.add_argument("--repeats", type=int, default=None,
                   help="runs per measurement (default 3 for up to 1M rows, 1 above)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 20k rows, 1 repeat, 4 files x 5k, 4 weeks x 1,000 patients")
    p.add_argument("--concurrency", type=int, default=2, help="worker pool processes for the size runs (2)")
    p.add_argument("--files", type=int, default=8, help="files of the multi-file batch (8)")
    p.add_argument("--file-rows", type=int, default=100_000, help="rows per file of the multi-file batch")
    p.add_argument("--weeks", type=int, default=20, help="weekly full Patients files (20)")
    p.add_argument("--patients", type=int, default=20_000, help="patients in the week-1 Patients file")
    p.add_argument("--weekly-repeats", type=int, default=1,
                   help="repeats of the weekly series unless --repeats is given (1: 20 runs already)")
    p.add_argument("--skip-dlt", action="store_true")
    p.add_argument("--skip-multi", action="store_true")
    p.add_argument("--skip-weekly", action="store_true")
    p.add_argument("--timeout", type=float, default=4 * 3600, help="seconds one run may take")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (bench/results)")
    p.add_argument("--verbose", action="store_true", help="print the CLI's per-file progress lines")
    p.add_argument("--keep-logs", action="store_true",
                   help="copy the worker, CLI and moto logs to <out>/e2e-logs (they are kept on a failure always)")
    p.add_argument("--render", action="store_true",
                   help="run nothing: write the markdown and the plot again from the JSON in --out (after a "
                        "change to bench/report.py; the measurements and their commit stay as they were)")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes = "20k"
        args.repeats = 1 if args.repeats is None else args.repeats
        args.files, args.file_rows = min(args.files, 4), min(args.file_rows, 5_000)
        args.weeks, args.patients = min(args.weeks, 4), min(args.patients, 1_000)
    args.size_list = R.parse_sizes(args.sizes)
    if args.files < 2 and not args.skip_multi:
        p.error("--files must be at least 2 (the scaling of 1 vs 2 workers needs more than one file)")
    if args.weeks < 2 and not args.skip_weekly:
        p.error("--weeks must be at least 2")
    return args


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _keep_logs(work: Path, out_dir: Path, name: str) -> Path:
    """The worker, CLI and moto logs copied out of the temporary folder, which is removed."""
    logs = out_dir / f"{name}-logs"
    logs.mkdir(exist_ok=True)
    for log in work.glob("*.log"):
        shutil.copy(log, logs / log.name)
    return logs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render(args.out, "e2e-quick" if args.quick else "e2e")
    command = "python -m bench.e2e " + " ".join(argv if argv is not None else sys.argv[1:])
    report: dict[str, Any] = {"meta": {
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": command.strip(),
        "commit": _commit(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
        "sizes": args.size_list, "concurrency": args.concurrency}}
    report["notes"] = [
        "pipeline seconds: the run's etl.load_runs started_at -> finished_at (created by the CLI just before "
        "it enqueues; finished by the last task), S3 -> raw -> stg -> core, typed, validated, with raw kept, "
        "rejects and history; the CLI's own wall time (process start to exit) is in the JSON",
        "bare COPY: the lines raw landing writes (lineage included), prepared in advance, into an all-text "
        "table without index; dlt: the same rows parsed in advance into text columns, merged on the "
        "natural key; dlt does not type, validate, keep raw, reject or keep history",
        f"size runs use a worker with {args.concurrency} pool processes; every run loads into a fresh "
        "database copied from a migrated template",
    ]
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "e2e-quick" if args.quick else "e2e"
    with tempfile.TemporaryDirectory(prefix="indici-bench-e2e-") as tmp:
        work = Path(tmp)
        say(f"working in {work}; sizes {', '.join(R.fmt_rows(s) for s in args.size_list)}")
        dbs = Databases()
        moto = None
        try:
            moto = Moto(work)
            with leased_redis() as broker:
                bench = Bench(args, work, dbs, moto, broker, notes=report["notes"])
                say(f"moto at {moto.endpoint}, Redis {broker.rsplit('/', 1)[-1]}, template database {dbs.template}")
                report["sizes"] = []
                for rows in args.size_list:
                    report["sizes"].append(bench_size(bench, rows))
                    _write(report, out_dir, name, partial=True)
                if not args.skip_multi:
                    report["multi_file"] = bench_multi(bench)
                    _write(report, out_dir, name, partial=True)
                if not args.skip_weekly:
                    report["weekly"] = bench_weekly(bench)
        except BaseException:
            say(f"failed; the worker, CLI and moto logs are in {_keep_logs(work, out_dir, name)}")
            raise
        else:
            if args.keep_logs:
                say(f"the worker, CLI and moto logs are in {_keep_logs(work, out_dir, name)}")
        finally:
            if moto is not None:
                moto.stop()
            dbs.close()
    report["meta"]["seconds"] = round(time.monotonic() - _T0, 1)
    report["meta"]["bench_peak_rss_mb"] = round(own_peak_rss_mb(), 1)
    text = _write(report, out_dir, name, partial=False)
    print()
    print(text)
    say(f"wrote {out_dir / (name + '.json')}, {name}.md and {name}.png")
    return 0


def render(out_dir: Path, name: str) -> int:
    """The report's markdown and plot written again from its JSON, by the report code of this commit."""
    report = json.loads((out_dir / f"{name}.json").read_text())
    report["meta"]["rendered_at_commit"] = _commit()
    _write(report, out_dir, name, partial=False)
    say(f"rendered {out_dir / (name + '.md')} and {name}.png from {name}.json (measured at {report['meta']['commit']})")
    return 0


def _write(report: dict[str, Any], out_dir: Path, name: str, partial: bool) -> str:
    report["targets"] = R.target_checks(report)
    text = R.markdown(report)
    (out_dir / f"{name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out_dir / f"{name}.md").write_text(text + "\n")
    if not partial:
        R.plot(report, out_dir / f"{name}.png")
    return text


if __name__ == "__main__":
    raise SystemExit(main())
