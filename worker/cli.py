"""`indici-ingest`: the command line of the service.

Exit codes: 0 ok; 1 the run failed or was partial; 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date

from pydantic import ValidationError

from worker.pipeline.identity import ConfigurationError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)") from exc


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--extract", action="append", default=[], metavar="NAME",
                        help="only this extract (repeatable; contract name or file token)")
    parser.add_argument("--inline", action="store_true",
                        help="run the steps in this process, without a worker")
    parser.add_argument("--wait", action="store_true",
                        help="block until the run ends, print its summary (implied by --inline)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="indici-ingest", description="Nightly Indici ingestion.")
    parser.add_argument("--log-level", default="INFO", help="level of the JSON log lines on stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="bring the database schema to the latest revision")

    run = sub.add_parser("run", help="load every batch newer than the last one loaded, per extract and practice "
                         "(the newest only on a first run); what beat enqueues")
    _add_run_options(run)

    backfill = sub.add_parser("backfill", help="load the batches extracted in a date range")
    backfill.add_argument("--from", dest="date_from", type=_date, required=True, help="first DateExtracted day")
    backfill.add_argument("--to", dest="date_to", type=_date, required=True, help="last DateExtracted day")
    backfill.add_argument("--prefix", default=None, help="only keys starting with this prefix")
    _add_run_options(backfill)

    sub.add_parser("health", help="print the health JSON")

    trace = sub.add_parser("trace", help="show where a core row came from (versions, stg, raw, files, runs)")
    trace.add_argument("table", help="core table (dim_patient, core.fact_appointment) or extract name")
    trace.add_argument("key", nargs="+", help="natural key values in order, e.g. 123 535 685146")

    serve_health = sub.add_parser("serve-health", help="serve GET /health over HTTP (200 healthy, 503 not)")
    serve_health.add_argument("--host", default="0.0.0.0", help="address to listen on")
    serve_health.add_argument("--port", type=int, default=8080, help="port to listen on")

    reprocess = sub.add_parser("reprocess", help="explicitly load a file version again (audited)")
    reprocess.add_argument("file_id", type=int)
    reprocess.add_argument("--reason", required=True)
    reprocess.add_argument("--by", default="cli", help="who asks (recorded)")

    synth = sub.add_parser("synth", help="write generated real-format extract files")
    from worker.synth.command import add_synth_arguments

    add_synth_arguments(synth)

    demo = sub.add_parser("demo", help="run the main job end to end on generated data")
    demo.add_argument("--patients", type=int, default=300, help="size of the generated population")
    demo.add_argument("--keep", action="store_true", help="leave the demo's services running")
    demo.add_argument("--inline", action="store_true", help="run the steps in this process, without Celery")
    return parser


def _settings():
    from worker.settings import get_settings

    return get_settings()


def cmd_migrate(args) -> int:
    from worker.pipeline.migrate import upgrade

    upgrade(_settings())
    print("database is at the latest revision")
    return EXIT_OK


def _print_progress(index: int, total: int, record) -> None:
    rows = record.rows_read if record.rows_read is not None else "-"
    extra = f" staged={record.rows_staged} rejected={record.rows_rejected}" if record.rows_staged is not None else ""
    print(f"[{index}/{total}] {record.status:<9} {record.extract:<22} rows={rows}{extra}  {record.s3_key}",
          flush=True)
    if record.status == "failed" and record.error:
        print(f"        error: {record.error}", flush=True)


def print_summary(summary: dict) -> None:
    print(json.dumps(summary, indent=2, default=str))


def _run(args, selection) -> int:
    from worker.io.db import connect
    from worker.io.s3 import make_client
    from worker.pipeline.run import run_inline

    settings = _settings()
    if not args.inline:
        # The Celery path: the run row is created here (so its id is known at once), the workers do
        # the rest; --wait follows the run in etl.load_runs, not in Celery's results.
        from worker import orchestration

        try:
            run_id = orchestration.enqueue_run(settings, selection)
        except orchestration.EnqueueError as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_FAILED
        if not args.wait:
            print_summary({"load_run_id": run_id, "status": "running"})
            return EXIT_OK
        try:
            summary = orchestration.wait_for_run(
                settings, run_id, progress=orchestration.FileProgress(run_id, _print_progress))
        except KeyboardInterrupt:
            print(f"stopped waiting; run {run_id} goes on in the workers", file=sys.stderr)
            return EXIT_FAILED
        print_summary(summary)
        return EXIT_OK if summary["status"] == "succeeded" else EXIT_FAILED
    with connect(settings) as conn:
        summary = run_inline(conn, make_client(settings), settings, selection, progress=_print_progress)
    print_summary(summary)
    return EXIT_OK if summary["status"] == "succeeded" else EXIT_FAILED


def cmd_run(args) -> int:
    from worker.pipeline.run import Selection

    return _run(args, Selection(kind="nightly", extracts=tuple(args.extract)))


def cmd_backfill(args) -> int:
    from worker.pipeline.run import Selection

    if args.date_from > args.date_to:
        print("--from must not be after --to", file=sys.stderr)
        return EXIT_USAGE
    selection = Selection(kind="backfill", date_from=args.date_from, date_to=args.date_to,
                          extracts=tuple(args.extract), key_prefix=args.prefix)
    return _run(args, selection)


def cmd_health(args) -> int:
    from worker.io.db import connect
    from worker.pipeline.health import health_report

    with connect(_settings()) as conn:
        report = health_report(conn)
    print_summary(report)
    return EXIT_OK if report["status"] == "ok" else EXIT_FAILED


def cmd_serve_health(args) -> int:
    from worker.health_http import serve

    serve(_settings(), args.host, args.port)
    return EXIT_OK


def cmd_trace(args) -> int:
    from worker.io.db import connect
    from worker.pipeline.trace import trace

    try:
        with connect(_settings()) as conn:
            result = trace(conn, args.table, args.key)
    except (KeyError, ValueError, LookupError) as exc:
        print(f"trace: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print_summary(result)
    if not result["core"] and not result["stg"]:
        print(f"trace: no row of {result['table']} or its staging has the key {result['key']}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_reprocess(args) -> int:
    from worker.io.db import connect
    from worker.pipeline import ledger

    with connect(_settings()) as conn:
        ledger.request_reprocess(conn, args.file_id, args.reason, args.by)
    print(f"file {args.file_id} will be loaded again by the next run")
    return EXIT_OK


def cmd_synth(args) -> int:
    from worker.synth.command import run_synth

    return run_synth(args)


def cmd_demo(args) -> int:
    from worker.demo import run_demo

    return run_demo(patients=args.patients, keep=args.keep, inline=args.inline)


COMMANDS = {
    "migrate": cmd_migrate,
    "run": cmd_run,
    "backfill": cmd_backfill,
    "health": cmd_health,
    "serve-health": cmd_serve_health,
    "reprocess": cmd_reprocess,
    "trace": cmd_trace,
    "synth": cmd_synth,
    "demo": cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage already; keep its code
        return int(exc.code or 0)
    from worker.log import configure

    configure(args.log_level)
    try:
        return COMMANDS[args.command](args)
    except (ValidationError, ConfigurationError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
