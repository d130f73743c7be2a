"""Run notifications: a summary of each finished run sent to every apprise URL in NOTIFY_URLS.

Three separate steps, so the message can be tested without sending and sending can never fail a run:
- `build_run_message(conn, run_id)`: the message, from the etl tables only (runs, files, checks,
  anomalies, skipped keys). Per extract: files, rows read, staged and rejected (with the reject rules),
  anomalies, failed files with their reason, the batches' DateExtracted; then the commands and SQL to
  look further. It never holds a patient value: only counts, names of files, rules and columns, and
  error texts cut to their first line with anything in double quotes (where Postgres quotes a value)
  masked.
- `send(message, urls)`: apprise, to every URL; returns (delivered, error) and never raises.
- `notify_run(conn, run_id, settings)`: once per run and outcome (etl.notifications records it, so a
  redelivered finalisation does not send twice), build and send; a failure is logged and recorded, not
  raised. No URL is ever logged or stored: URLs may hold tokens.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from worker.log import get_logger
from worker.pipeline import relaxed
from worker.pipeline.anomalies import CHECK_PREFIX
from worker.pipeline.health import nz
from worker.settings import Settings, get_settings

log = get_logger(__name__)

_QUOTED = re.compile(r'"[^"]*"')
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
ERROR_CHARS = 300


@dataclass(frozen=True)
class RunMessage:
    load_run_id: int
    status: str
    title: str
    body: str
    notify_type: str  # apprise NotifyType: success | warning | failure | info


def safe_error(text: str | None) -> str:
    """An error text fit for a message: its first line, quoted values masked, cut short."""
    if not text:
        return ""
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = _QUOTED.sub('"…"', line)
    return line if len(line) <= ERROR_CHARS else line[: ERROR_CHARS - 1] + "…"


def _when(ts: datetime | None) -> str:
    return (nz(ts) or "-").replace("T", " ")


def build_run_message(conn: psycopg.Connection, run_id: int) -> RunMessage:
    """The summary of one run (see the module docstring)."""
    run = conn.execute(
        "SELECT kind, status, started_at, finished_at, error FROM etl.load_runs WHERE load_run_id = %s", (run_id,)
    ).fetchone()
    if run is None:
        raise LookupError(f"no run {run_id} in etl.load_runs")
    kind, status, started, finished, run_error = run
    files = conn.execute(
        "SELECT file_id, extract, s3_key, status, rows_read, rows_staged, rows_rejected, date_extracted, error "
        "FROM etl.load_run_files WHERE load_run_id = %s ORDER BY extract, file_id",
        (run_id,),
    ).fetchall()
    rules = conn.execute(
        """
        SELECT d.extract, d.rule, sum(d.observed)::bigint FROM etl.dq_results d
        JOIN etl.load_run_files f ON f.file_id = d.file_id
        WHERE f.load_run_id = %s AND d.check_name = 'rule_violations' AND d.detail ->> 'severity' = 'reject'
        GROUP BY 1, 2 ORDER BY 1, 3 DESC
        """,
        (run_id,),
    ).fetchall()
    anomaly_rows = conn.execute(
        "SELECT extract, detail ->> 'message' FROM etl.dq_results WHERE load_run_id = %s AND check_name LIKE %s "
        "AND NOT passed ORDER BY extract, check_name",
        (run_id, CHECK_PREFIX + "%"),
    ).fetchall()
    skipped = conn.execute("SELECT count(*) FROM etl.skipped_keys WHERE load_run_id = %s", (run_id,)).fetchone()
    relaxed_of: dict[str, list[str]] = defaultdict(list)
    for use in relaxed.uses(conn, run_id):
        column = f"({use['column']})" if use["column"] else ""
        relaxed_of[use["extract"]].append(
            f"file {use['file_id']} held to a relaxed {use['check']}{column} {use['threshold']:g} "
            f"(window {use['window']['from']}..{use['window']['to']}"
            + (f", {safe_error(use['reason'])}" if use.get("reason") else "") + ")")

    per_extract: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for f in files:
        per_extract[f[1]].append(f)
    rules_of: dict[str, list[str]] = defaultdict(list)
    for extract, rule, count in rules:
        rules_of[extract].append(f"{rule} {count}")
    anomalies_of: dict[str, list[str]] = defaultdict(list)
    for extract, message in anomaly_rows:
        anomalies_of[extract].append(message or "anomaly")
        per_extract.setdefault(extract, [])

    failed = [f for f in files if f[3] == "failed"]
    lines = [f"Run {run_id} ({kind}) {status}: {len(files)} files, {len(failed)} failed, "
             f"{len(anomaly_rows)} anomalies.",
             f"Started {_when(started)}, finished {_when(finished)}."]
    if run_error:
        lines.append(f"Run error: {safe_error(run_error)}")
    if skipped and skipped[0]:
        lines.append(f"{skipped[0]} S3 keys skipped because their names do not parse (indici-ingest skipped).")
    for extract in sorted(per_extract):
        rows = per_extract[extract]
        by_status: dict[str, int] = defaultdict(int)
        for f in rows:
            by_status[f[3]] += 1
        read = sum(f[4] or 0 for f in rows)
        staged = sum(f[5] or 0 for f in rows)
        rejected = sum(f[6] or 0 for f in rows)
        batches = sorted({_when(f[7]) for f in rows})
        lines.append("")
        lines.append(f"{extract}: {len(rows)} files ({', '.join(f'{n} {s}' for s, n in sorted(by_status.items()))}); "
                     f"rows read {read}, ingested {staged}, rejected {rejected}"
                     + (f" ({', '.join(rules_of[extract][:4])})" if rules_of[extract] else "") + ".")
        if batches:
            lines.append(f"  DateExtracted: {', '.join(batches)}")
        for message in anomalies_of[extract]:
            lines.append(f"  Anomaly: {message}")
        for message in relaxed_of[extract]:
            lines.append(f"  Relaxed threshold: {message}")
        for f in rows:
            if f[3] == "failed":  # errors start with the key; it is said once
                lines.append(f"  Failed: file {f[0]} {f[2]}: {safe_error((f[8] or '').removeprefix(f[2] + ': '))}")
    lines += ["", "Look further:",
              f"  indici-ingest status {run_id}",
              f"  indici-ingest rejects --run {run_id}",
              "  indici-ingest health",
              f"  SELECT file_id, s3_key, status, error FROM etl.load_run_files WHERE load_run_id = {run_id} "
              "ORDER BY file_id;"]
    if anomaly_rows:
        lines.append(f"  SELECT extract, check_name, observed, threshold, detail FROM etl.dq_results "
                     f"WHERE load_run_id = {run_id} AND check_name LIKE 'anomaly_%' AND NOT passed;")
    problems = len(failed) + len(anomaly_rows)
    notify_type = {"succeeded": "warning" if anomaly_rows else "success", "partial": "warning",
                   "failed": "failure"}.get(status, "info")
    title = f"indici-ingest run {run_id} {status}" + (f" ({len(failed)} of {len(files)} files failed)" if failed
                                                      else f" ({problems} anomalies)" if problems else "")
    return RunMessage(run_id, status, title, "\n".join(lines), notify_type)


def notify_urls(settings: Settings) -> list[str]:
    """The NOTIFY_URLS entries (comma-separated; blanks ignored)."""
    return [u.strip() for u in settings.notify_urls.get_secret_value().split(",") if u.strip()]


def send(message: RunMessage, urls: list[str]) -> tuple[bool, str | None]:
    """Send to every URL; (delivered to all, error). Never raises; never logs a URL."""
    try:
        import apprise

        targets = apprise.Apprise()
        for index, url in enumerate(urls, 1):
            if not targets.add(url):
                return False, f"NOTIFY_URLS entry {index} is not a URL apprise supports"
        # apprise's own log lines are captured (they are not JSON) and the last one becomes the reason.
        with apprise.LogCapture(level=logging.WARNING) as captured:  # type: ignore[no-untyped-call]
            delivered = bool(targets.notify(body=message.body, title=message.title, notify_type=message.notify_type))
        if delivered:
            return True, None
        lines = [line.split(" - ", 2)[-1] for line in captured.getvalue().splitlines() if line.strip()]
        reason = _URL.sub("<url>", lines[-1])[:200] if lines else "no reason given"
        return False, f"a notification service did not accept the message: {reason}"
    except Exception as exc:  # sending must never break what called it
        return False, f"{type(exc).__name__}"


def notify_run(conn: psycopg.Connection, run_id: int, settings: Settings | None = None) -> bool | None:
    """Send the run's summary once per outcome; None when off, already sent or the run is still running.
    Any failure is logged and recorded in etl.notifications, never raised."""
    try:
        urls = notify_urls(settings or get_settings())
        if not urls:
            return None
        conn.rollback()
        row = conn.execute("SELECT status FROM etl.load_runs WHERE load_run_id = %s", (run_id,)).fetchone()
        if row is None or row[0] == "running":
            conn.rollback()
            return None
        claimed = conn.execute(
            "INSERT INTO etl.notifications (load_run_id, run_status, targets) VALUES (%s, %s, %s) "
            "ON CONFLICT (load_run_id, run_status) DO NOTHING RETURNING notification_id",
            (run_id, row[0], len(urls)),
        ).fetchone()
        conn.commit()
        if claimed is None:
            return None
        message = build_run_message(conn, run_id)
        conn.commit()
        delivered, error = send(message, urls)
        conn.execute("UPDATE etl.notifications SET delivered = %s, error = %s, sent_at = now() "
                     "WHERE notification_id = %s", (delivered, error, claimed[0]))
        conn.commit()
        if delivered:
            log.info("run notification sent", load_run_id=run_id, targets=len(urls))
        else:
            log.warning("run notification not delivered", load_run_id=run_id, error=error)
        return delivered
    except Exception as exc:  # a notification never fails a run
        try:
            conn.rollback()
        except Exception:
            pass
        log.warning("run notification failed", load_run_id=run_id, error=type(exc).__name__)
        return False
