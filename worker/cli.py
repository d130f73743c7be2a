"""`indici-ingest`: the command line of the service.

Exit codes: 0 ok; 1 the run failed or was partial; 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from typing import NoReturn

from pydantic import ValidationError
from pydantic_settings import SettingsError

from worker.io.roles import LOGIN_ROLES
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


class _Parser(argparse.ArgumentParser):
    """argparse, except that it never repeats unrecognised arguments (one may be a mistyped secret)."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments:"):
            message = "unrecognized arguments (not shown: one may be a secret)"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="indici-ingest", description="Nightly Indici ingestion.")
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
    serve_health.add_argument("--host", default="127.0.0.1",
                              help="address to listen on (default: this machine only; 0.0.0.0 in a container)")
    serve_health.add_argument("--port", type=int, default=8080, help="port to listen on")

    reprocess = sub.add_parser("reprocess", help="explicitly load a file version again (audited)")
    reprocess.add_argument("file_id", type=int)
    reprocess.add_argument("--reason", required=True)
    reprocess.add_argument("--by", default="cli", help="who asks (recorded)")

    grant = sub.add_parser("grant-login", help="create or update a login holding one project role "
                           "(password from stdin or a file, never an argument)")
    grant.add_argument("name", help="the login role's name")
    grant.add_argument("--role", required=True, choices=LOGIN_ROLES, help="the one project role it holds")
    source = grant.add_mutually_exclusive_group()
    source.add_argument("--password-file", metavar="PATH", help="read the password from this file")
    source.add_argument("--password-stdin", action="store_true",
                        help="read the password from standard input (the default when it is not a terminal)")
    source.add_argument("--password", help=argparse.SUPPRESS)  # only to refuse it without echoing it

    for command, verb in (("bind-org", "let a reader login see"), ("unbind-org", "stop a reader login seeing")):
        bind = sub.add_parser(command, help=f"{verb} the core rows of one organisation (audited)")
        bind.add_argument("login", help="a login holding app_reader or identified_reader")
        bind.add_argument("per_org_id", type=int, help="the organisation's PerOrgID")
        bind.add_argument("--by", default=None, help="who asks (recorded; default: the operating-system user)")

    rekey = sub.add_parser("rekey", help="re-hash every NHI in core under NHI_HMAC_KEY (key rotation; "
                           "NHI_HMAC_KEY_PREVIOUS must be the current key)")
    rekey.add_argument("--by", default=None, help="who asks (recorded; default: the operating-system user)")
    rekey.add_argument("--previous-key-lost", action="store_true",
                       help="the current key is lost or compromised: rotate without NHI_HMAC_KEY_PREVIOUS (recorded)")

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


def _read_password(args) -> str:
    """From --password-file, else standard input (a prompt without echo on a terminal). Never echoed."""
    import getpass

    if args.password_file:
        try:
            text = open(args.password_file, encoding="utf-8").read()
        except OSError as exc:
            raise ValueError(f"--password-file: cannot read {args.password_file} ({exc.strerror})") from None
    elif not args.password_stdin and sys.stdin.isatty():
        text = getpass.getpass("password: ")
        if getpass.getpass("again: ") != text:
            raise ValueError("the two passwords differ")
    else:
        text = sys.stdin.read()
    return text[:-1] if text.endswith("\n") else text


def cmd_grant_login(args) -> int:
    from worker.io.db import connect
    from worker.io.logins import LoginError, grant_login

    if args.password is not None:
        print("grant-login: a password is never an argument (shell history, process list): "
              "use --password-file PATH or standard input", file=sys.stderr)
        return EXIT_USAGE
    settings = _settings()
    try:
        password = _read_password(args)
        with connect(settings, migration=True) as conn:
            result = grant_login(conn, settings, args.name, args.role, password)
            conn.commit()
    except (LoginError, ValueError) as exc:
        print(f"grant-login: {exc}", file=sys.stderr)
        return EXIT_USAGE
    revoked = f" (no longer: {', '.join(result.revoked)})" if result.revoked else ""
    print(f"login {result.login} {'created' if result.created else 'updated'}: holds {result.role}{revoked}")
    return EXIT_OK


def _cmd_binding(args, bind: bool) -> int:
    from worker.io.db import connect
    from worker.io.logins import LoginError, bind_org, operator, unbind_org

    settings = _settings()
    by = args.by or operator()
    try:
        with connect(settings, migration=True) as conn:
            change = bind_org if bind else unbind_org
            orgs = change(conn, settings, args.login, args.per_org_id, by)
            conn.commit()
    except LoginError as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"login {args.login} sees organisations: {', '.join(map(str, orgs)) or 'none'}")
    return EXIT_OK


def cmd_bind_org(args) -> int:
    return _cmd_binding(args, bind=True)


def cmd_unbind_org(args) -> int:
    return _cmd_binding(args, bind=False)


def cmd_rekey(args) -> int:
    from worker.io.db import connect
    from worker.io.logins import operator
    from worker.pipeline.nhi_keys import RekeyError, rekey

    settings = _settings()
    try:
        with connect(settings) as conn:
            summary = rekey(conn, settings, args.by or operator(), previous_key_lost=args.previous_key_lost)
    except RekeyError as exc:
        print(f"rekey: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print_summary(summary)
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
    "grant-login": cmd_grant_login,
    "bind-org": cmd_bind_org,
    "unbind-org": cmd_unbind_org,
    "rekey": cmd_rekey,
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
    except (ValidationError, SettingsError, ConfigurationError) as exc:
        print(f"configuration error: {configuration_message(exc)}", file=sys.stderr)
        return EXIT_USAGE


def configuration_message(exc: Exception) -> str:
    """A configuration error in one line per problem, naming the setting, never showing its value."""
    if isinstance(exc, ValidationError):
        lines = []
        for error in exc.errors(include_url=False, include_input=False, include_context=False):
            where = ".".join(str(part) for part in error["loc"]) or "settings"
            lines.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
        message = "; ".join(lines)
    else:
        message = str(exc)
    from worker.redact import redact

    return redact(message)


if __name__ == "__main__":
    sys.exit(main())
