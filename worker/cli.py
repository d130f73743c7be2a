"""`indici-ingest`: the command line of the service.

Exit codes: 0 ok; 1 the run failed or was partial, or a service did not answer; 2 bad usage or
configuration. Errors are one or two lines naming the setting, argument or service and what to do
(worker/errors.py); `--debug` adds the traceback. Settings are checked before any work
(worker/preflight.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
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
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="with --wait: stop waiting after this long (exit 1; the run goes on)")


class _Parser(argparse.ArgumentParser):
    """argparse, except that it never repeats unrecognised arguments (one may be a mistyped secret)."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments:"):
            message = "unrecognized arguments (not shown: one may be a secret)"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="indici-ingest", description="Nightly Indici ingestion.")
    parser.add_argument("--log-level", default="INFO", help="level of the JSON log lines on stderr")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="bring the database schema to the latest revision")

    run = sub.add_parser("run", help="load every batch newer than the last one loaded, per extract and practice "
                         "(every batch on a first run); what beat enqueues")
    _add_run_options(run)

    backfill = sub.add_parser("backfill", help="load the batches extracted in a date range")
    backfill.add_argument("--from", dest="date_from", type=_date, required=True, help="first DateExtracted day")
    backfill.add_argument("--to", dest="date_to", type=_date, required=True, help="last DateExtracted day")
    backfill.add_argument("--prefix", default=None, help="only keys starting with this prefix")
    _add_run_options(backfill)

    status = sub.add_parser("status", help="show a run's status and summary (exit 0 succeeded or running, "
                            "1 partial or failed)")
    status.add_argument("run_id", type=int, help="the run's load_run_id")
    status.add_argument("--follow", action="store_true", help="print its files as they end, until the run ends")
    status.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="with --follow: stop following after this long")

    sub.add_parser("health", help="print the health JSON (exit 0 healthy or warning, 1 not healthy)")

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

    _add_operator_commands(sub)
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
    demo.add_argument("--fresh", action="store_true",
                      help="drop and recreate the demo database first (only one the demo created)")
    demo.add_argument("--external", action="store_true",
                      help="use the configured S3 bucket and Celery workers instead of starting them "
                           "(the compose stack's demo profile)")
    return parser


def _add_operator_commands(sub) -> None:
    rejects = sub.add_parser("rejects", help="rejected rows: file, row number, column, rule, value (never the row)")
    rejects.add_argument("--extract", action="append", default=[], metavar="NAME", help="only this extract")
    rejects.add_argument("--run", type=int, metavar="N", help="only rows rejected by run N")
    rejects.add_argument("--limit", type=int, default=50, help="rows per extract (default 50)")
    rejects.add_argument("--json", action="store_true", help="JSON instead of a table")

    skipped = sub.add_parser("skipped", help="S3 keys discovery skipped because their names do not parse")
    skipped.add_argument("--run", type=int, metavar="N", help="only keys seen by run N")
    skipped.add_argument("--json", action="store_true", help="JSON instead of a table")

    cfg = sub.add_parser("config", help="thresholds, flags and expected deliveries in etl.config")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    show = cfg_sub.add_parser("show", help="the stored values, or an extract's effective values")
    show.add_argument("--extract", metavar="NAME", help="effective values for this extract (own, '*' or default)")
    show.add_argument("--key", help="only this key")
    show.add_argument("--json", action="store_true", help="JSON instead of a table")
    cfg_set = cfg_sub.add_parser("set", help="set a value (validated, audited in etl.operator_actions)")
    cfg_set.add_argument("extract", help="extract name, or '*' for every extract")
    cfg_set.add_argument("key", help="see `config show --extract NAME` for the keys and their meaning")
    cfg_set.add_argument("value", help="JSON (0.1, 5, true, [\"2508190850\"], {\"col\": 0.2}) or a word (weekly)")
    cfg_set.add_argument("--by", default=None, help="who (recorded; default the operating-system user)")

    domains = sub.add_parser("domains", help="coded values seen in the files and their mapping")
    dom_sub = domains.add_subparsers(dest="domains_command", required=True)
    listing = dom_sub.add_parser("list", help="coverage per domain, or one domain's values")
    listing.add_argument("domain", nargs="?", help="show this domain's values")
    listing.add_argument("--unmapped", action="store_true", help="only values not mapped yet")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    mapping = dom_sub.add_parser("map", help="map a value to a label (audited in etl.operator_actions)")
    mapping.add_argument("domain")
    mapping.add_argument("value", help="the value exactly as the files write it")
    mapping.add_argument("label", help="its meaning")
    mapping.add_argument("--by", default=None, help="who (recorded; default the operating-system user)")

    restage = sub.add_parser("restage", help="replay an extract's raw rows through the current contract (after a "
                             "contract fix), into stg and core, in a run of its own (audited)")
    restage.add_argument("--extract", required=True, metavar="NAME", help="the extract whose files to restage")
    restage.add_argument("--run", type=int, metavar="N", help="only the files of run N (default: every file "
                         "of the extract that has rows in raw)")
    restage.add_argument("--by", default=None, help="who (recorded; default the operating-system user)")


_SETTINGS = None


def _settings():
    """The process's settings, checked (URL schemes, NOTIFY_URLS) before any work uses them."""
    global _SETTINGS
    if _SETTINGS is None:
        from worker.preflight import check_settings
        from worker.settings import get_settings

        settings = get_settings()
        check_settings(settings)
        _SETTINGS = settings
    return _SETTINGS


def cmd_migrate(args) -> int:
    from worker.pipeline.migrate import upgrade

    upgrade(_settings())
    print("database is at the latest revision")
    return EXIT_OK


def print_summary(summary: dict) -> None:
    print(json.dumps(summary, indent=2, default=str))


def _run(args, selection) -> int:
    from worker.io.db import connect
    from worker.io.s3 import make_client
    from worker.pipeline.run import run_inline

    settings = _settings()
    selection = _preflight_run(settings, selection, args.inline)
    if not args.inline:
        # The Celery path: the run row is created here (so its id is known at once), the workers do
        # the rest; --wait follows the run in etl.load_runs, not in Celery's results.
        from worker import orchestration

        try:
            run_id = orchestration.enqueue_run(settings, selection)
        except orchestration.EnqueueError as exc:
            from worker.errors import broker_message

            print(broker_message(settings, str(exc)), file=sys.stderr)
            return EXIT_FAILED
        if not args.wait:
            print_summary({"load_run_id": run_id, "status": "running"})
            return EXIT_OK
        missing = orchestration.missing_consumers()
        if missing:
            print(f"no worker consumes the queue(s) {', '.join(missing)} on this broker: run {run_id} is "
                  "queued and starts when a worker does (start one: celery -A worker.app worker); follow it "
                  f"with `indici-ingest status {run_id} --follow`", file=sys.stderr)
            return EXIT_FAILED
        return _follow(settings, run_id, args.timeout)
    from worker.progress import for_settings

    with connect(settings) as conn, for_settings(settings) as shown:
        summary = run_inline(conn, make_client(settings), settings, selection, progress=shown)
    print_summary(summary)
    return EXIT_OK if summary["status"] == "succeeded" else EXIT_FAILED


def _follow(settings, run_id: int, timeout: float | None) -> int:
    from worker import orchestration
    from worker.progress import RunProgress

    try:
        with RunProgress(run_id) as shown:  # live at a terminal, plain lines otherwise
            summary = orchestration.wait_for_run(settings, run_id, timeout=timeout, progress=shown)
    except KeyboardInterrupt:
        print(f"stopped waiting; run {run_id} goes on in the workers", file=sys.stderr)
        return EXIT_FAILED
    except orchestration.RunTimeout as exc:
        print(f"{exc}; it goes on in the workers (indici-ingest status {run_id} --follow)", file=sys.stderr)
        return EXIT_FAILED
    print_summary(summary)
    return EXIT_OK if summary["status"] == "succeeded" else EXIT_FAILED


def cmd_status(args) -> int:
    from worker import orchestration
    from worker.io.db import connect

    settings = _settings()
    with connect(settings, autocommit=True) as conn:
        outcome = orchestration.run_outcome(conn, args.run_id)
    if outcome is None:
        print(f"status: there is no run {args.run_id} in etl.load_runs", file=sys.stderr)
        return EXIT_USAGE
    if args.follow and outcome["status"] == "running":
        return _follow(settings, args.run_id, args.timeout)
    print_summary(outcome)
    return EXIT_OK if outcome["status"] in ("succeeded", "running") else EXIT_FAILED


def _preflight_run(settings, selection, inline: bool):
    """Before a run: known extract names (canonical from here on); for --inline also the NHI key, the
    database and S3, each with one quick call (the Celery path's workers check their own settings)."""
    from dataclasses import replace

    from worker import preflight

    selection = replace(selection, extracts=preflight.resolve_extracts(selection.extracts))
    if inline:
        preflight.check_nhi_key(settings, selection.extracts)
        preflight.check_database(settings)
        preflight.check_s3(settings)
    return selection


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
    from worker.health_http import health_response

    status, report = health_response(_settings())
    print_summary(report)
    return EXIT_OK if status == 200 else EXIT_FAILED


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
    from worker.pipeline import lifecycle

    try:
        with connect(_settings()) as conn:
            lifecycle.request_reprocess(conn, args.file_id, args.reason, args.by)
    except LookupError:
        print(f"reprocess: there is no file {args.file_id} in etl.load_run_files; list files with\n"
              "  SELECT file_id, s3_key, status FROM etl.load_run_files ORDER BY file_id DESC LIMIT 20",
              file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        print(f"reprocess: {exc} (--reason)", file=sys.stderr)
        return EXIT_USAGE
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

    return run_demo(patients=args.patients, keep=args.keep, inline=args.inline, fresh=args.fresh,
                    external=args.external)


def _table(rows: list[dict], columns: list[str]) -> None:
    """Rows as aligned text columns (values shown with repr-free str; None as '-')."""
    cells = [[("-" if r.get(c) is None else json.dumps(r[c]) if isinstance(r[c], (dict, list)) else str(r[c]))
              for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def cmd_rejects(args) -> int:
    from worker.io.db import connect
    from worker.pipeline.operator import list_rejects
    from worker.preflight import resolve_extracts

    extracts = list(resolve_extracts(args.extract))
    with connect(_settings()) as conn:
        lines, counts = list_rejects(conn, extracts, args.run, args.limit)
    if args.json:
        print_summary({"rejected_rows": {k: v for k, v in counts.items() if v}, "lines": [x.as_dict() for x in lines]})
        return EXIT_OK
    if not any(counts.values()):
        print("no rejected rows" + (f" in run {args.run}" if args.run else ""))
        return EXIT_OK
    _table([x.as_dict() for x in lines],
           ["extract", "load_run_id", "file_id", "row_number", "column", "rule", "severity", "value", "s3_key"])
    for extract, n in counts.items():
        if n > args.limit:
            print(f"{extract}: {n} rejected rows, the first {args.limit} shown (--limit)")
    return EXIT_OK


def cmd_skipped(args) -> int:
    from worker.io.db import connect
    from worker.pipeline.operator import list_skipped

    with connect(_settings()) as conn:
        rows = list_skipped(conn, args.run)
    if args.json:
        print_summary({"skipped": rows})
    elif not rows:
        print("no skipped keys")
    else:
        _table(rows, ["s3_key", "reason", "runs", "last_run_id", "last_seen", "s3_version_id"])
    return EXIT_OK


def cmd_config(args) -> int:
    from worker.io.db import connect
    from worker.pipeline import operator
    from worker.pipeline.config_keys import GLOBAL, ConfigValueError, parse_text
    from worker.preflight import resolve_extracts

    with connect(_settings()) as conn:
        if args.config_command == "show":
            extract = (None if not args.extract else GLOBAL if args.extract == GLOBAL
                       else resolve_extracts([args.extract])[0])
            rows = operator.config_rows(conn, extract, args.key)
            if args.json:
                print_summary({"config": rows})
            else:
                _table(rows, ["extract", "key", "value", "source"] + (["meaning"] if extract else []))
            return EXIT_OK
        extract = GLOBAL if args.extract == GLOBAL else resolve_extracts([args.extract])[0]
        try:
            previous, value = operator.set_config(conn, extract, args.key, parse_text(args.value),
                                                  args.by or operator.default_actor())
        except ConfigValueError as exc:
            print(f"config set {args.key}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        conn.commit()
    was = "" if previous is None else f" (was {json.dumps(previous['value'])}, {previous['source']})"
    print(f"{extract} {args.key} = {json.dumps(value)}{was}")
    return EXIT_OK


def cmd_domains(args) -> int:
    from worker.io.db import connect
    from worker.pipeline import operator

    known = operator.domain_columns()
    domain = getattr(args, "domain", None)
    if domain is not None and domain not in known:
        import difflib

        close = difflib.get_close_matches(domain, list(known), n=3)
        print(f"unknown domain {domain!r}" + (f"; did you mean {' or '.join(close)}?" if close else "")
              + f" (the domains: {', '.join(known)})", file=sys.stderr)
        return EXIT_USAGE
    with connect(_settings()) as conn:
        if args.domains_command == "map":
            previous = operator.map_domain_value(conn, domain, args.value, args.label,
                                                 args.by or operator.default_actor())
            conn.commit()
            was = "" if previous is None else f" (was {previous['label'] or 'unlabelled'}, " \
                f"{'mapped' if previous['is_mapped'] else 'not mapped'})"
            print(f"{domain}: {args.value!r} -> {args.label!r}{was}")
            return EXIT_OK
        if domain is None:
            rows = operator.domain_coverage(conn)
            for r in rows:
                r["coverage"] = "-" if r["coverage"] is None else f"{r['coverage']:.0%}"
                r["columns"] = ", ".join(r["columns"])
            columns = ["domain", "values", "mapped", "unmapped", "coverage", "columns"]
        else:
            rows = operator.domain_values(conn, domain, args.unmapped)
            columns = ["value", "label", "mapped", "first_seen", "last_seen", "first_seen_in"]
    if args.json:
        print_summary({"domains" if domain is None else domain: rows})
    else:
        _table(rows, columns)
    return EXIT_OK


def cmd_restage(args) -> int:
    from worker import preflight
    from worker.io.db import connect
    from worker.pipeline.operator import default_actor
    from worker.pipeline.restage import RestageError, restage

    settings = _settings()
    (extract,) = preflight.resolve_extracts([args.extract])
    preflight.check_nhi_key(settings, (extract,))
    try:
        with connect(settings) as conn:
            summary = restage(conn, settings, extract, args.run, args.by or default_actor())
    except RestageError as exc:
        print(f"restage: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print_summary(summary)
    return EXIT_OK if summary["status"] == "succeeded" else EXIT_FAILED


COMMANDS = {
    "migrate": cmd_migrate,
    "run": cmd_run,
    "backfill": cmd_backfill,
    "health": cmd_health,
    "serve-health": cmd_serve_health,
    "reprocess": cmd_reprocess,
    "status": cmd_status,
    "trace": cmd_trace,
    "rejects": cmd_rejects,
    "skipped": cmd_skipped,
    "config": cmd_config,
    "domains": cmd_domains,
    "restage": cmd_restage,
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
    except BaseException as exc:  # every error ends as a short message and an exit code
        if isinstance(exc, SystemExit):
            raise
        return _report_error(exc, args.debug)


def _report_error(exc: BaseException, debug: bool) -> int:
    from worker.errors import explain
    from worker.redact import redact

    if debug:
        traceback.print_exc()
    try:
        settings = _SETTINGS
        if settings is None:
            from worker.settings import get_settings

            settings = get_settings()
    except Exception:
        settings = None
    explained = explain(exc, settings)
    if explained is not None:
        print(redact(explained.message), file=sys.stderr)
        return explained.code
    text = redact(str(exc))  # a secret may be inside an unknown error's text
    print(f"error: {type(exc).__name__}: {text.splitlines()[0] if text else ''}"
          + ("" if debug else "\n(run with --debug for the traceback)"), file=sys.stderr)
    return EXIT_FAILED


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
