"""The health report, computed on each call from the ledger, the runs and the checks.

Nothing here reads a status that a run wrote for it: every answer is derived from etl.load_run_files,
etl.load_runs, etl.dq_results and etl.config, so a later run that repairs an extract clears its failure,
and an extract whose newest delivered batch failed stays failing whichever run came last.

Per extract (the contracts' names):
- last_success: the run that last merged a file of it, when, and that file's DateExtracted;
  newest_date_extracted: the newest batch in core (merged, or a duplicate of loaded bytes);
- freshness: stale when newest_date_extracted is older than the expected delivery (etl.config
  `expected_delivery`, default weekly) plus `stale_grace_days` (default 1): 8 days for weekly;
- the newest delivered batch, per practice: failing when one of its files (the newest version of each
  key) failed or was left out of core by a run that has ended (e.g. staged, its merge failed);
- older failed files (a warning: newer batches are in core, but what the failed one changed is not);
- failed data-quality checks of the newest batch and of the last merge (a warning unless the file failed);
- anomalies of its last evaluated load (worker/pipeline/anomalies.py; a warning).
Runs: the last finished run (failing when it failed: a later successful run clears it), runs still
running with their age and idle time (stuck, and failing, after `stuck_run_hours` without progress),
and the failed or partial runs of the last 8 days.

Overall: "failing" when anything is a problem, else "warning" when anything deserves a look, else "ok";
"no_data" before the first run. HTTP maps ok and warning to 200, everything else to 503
(worker/health_http.py, which adds worker liveness: this module knows nothing of Celery).
Times are New Zealand times with their offset.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg

from contracts.registry import load_all
from worker.pipeline import config
from worker.pipeline.anomalies import CHECK_PREFIX
from worker.pipeline.config_keys import DELIVERY_DAYS, GLOBAL, default
from worker.pipeline.nztime import NZ

RECENT_RUN_DAYS = 8
IN_CORE = ("merged", "duplicate")
NOT_YET_IN_CORE = ("pending", "landed", "staged")


def nz(ts: datetime | None) -> str | None:
    """An aware timestamp as New Zealand time with its offset, e.g. 2025-08-19T08:50:00+12:00."""
    return None if ts is None else ts.astimezone(NZ).isoformat(timespec="seconds")


def _days(delta: timedelta) -> float:
    return round(delta.total_seconds() / 86400, 2)


def _latest_versions(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """The newest version of each key in the ledger, with whether it belongs to the newest batch of its
    extract and practice; only rows that are not in core, or are in a newest batch."""
    cur = conn.execute(
        """
        WITH latest AS (
            SELECT DISTINCT ON (f.s3_bucket, f.s3_key)
                   f.file_id, f.load_run_id, f.extract, f.per_org_id, f.practice_id, f.s3_key, f.status,
                   f.error, f.date_extracted, r.status AS run_status
            FROM etl.load_run_files f JOIN etl.load_runs r USING (load_run_id)
            WHERE f.status <> 'superseded'
            ORDER BY f.s3_bucket, f.s3_key, f.s3_last_modified DESC NULLS LAST, f.file_id DESC
        ), ranked AS (
            SELECT *, date_extracted = max(date_extracted) OVER (PARTITION BY extract, per_org_id, practice_id)
                   AS in_newest_batch
            FROM latest
        )
        SELECT * FROM ranked WHERE in_newest_batch OR status NOT IN ('merged', 'duplicate')
        ORDER BY extract, per_org_id, practice_id, date_extracted, file_id
        """
    )
    names = [c.name for c in cur.description or []]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _per_extract(conn: psycopg.Connection, query: str, params: Any = None) -> dict[str, tuple[Any, ...]]:
    return {row[0]: tuple(row[1:]) for row in conn.execute(query, params).fetchall()}


def _failed_checks(conn: psycopg.Connection, file_ids: list[int], merge_runs: list[int]) -> list[dict[str, Any]]:
    rows = conn.execute(
        """
        SELECT extract, check_name, column_name, rule, observed, threshold, file_id, load_run_id
        FROM etl.dq_results
        WHERE NOT passed AND check_name NOT LIKE %(anomaly)s
          AND (file_id = ANY(%(files)s) OR (file_id IS NULL AND load_run_id = ANY(%(runs)s)))
        ORDER BY extract, dq_result_id
        """,
        {"anomaly": CHECK_PREFIX + "%", "files": file_ids, "runs": merge_runs},
    ).fetchall()
    names = ("extract", "check", "column", "rule", "observed", "threshold", "file_id", "load_run_id")
    return [{k: (float(v) if k in ("observed", "threshold") and v is not None else v)
             for k, v in zip(names, row)} for row in rows]


def _anomalies(conn: psycopg.Connection) -> dict[str, list[dict[str, Any]]]:
    """Per extract, the anomalies of its last evaluated load (a later normal load clears them)."""
    rows = conn.execute(
        """
        WITH last AS (
            SELECT DISTINCT ON (extract) extract, load_run_id FROM etl.dq_results
            WHERE check_name LIKE %(anomaly)s ORDER BY extract, load_run_id DESC
        )
        SELECT d.extract, d.load_run_id, d.check_name, d.observed, d.threshold, d.detail
        FROM etl.dq_results d JOIN last USING (extract, load_run_id)
        WHERE d.check_name LIKE %(anomaly)s AND NOT d.passed ORDER BY d.extract, d.check_name
        """,
        {"anomaly": CHECK_PREFIX + "%"},
    ).fetchall()
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for extract, run, check, observed, threshold, detail in rows:
        out[extract].append({
            "load_run_id": run, "metric": check.removeprefix(CHECK_PREFIX),
            "observed": float(observed) if observed is not None else None,
            "bound": float(threshold) if threshold is not None else None,
            "baseline_median": (detail or {}).get("baseline_median"),
            "message": (detail or {}).get("message"),
        })
    return out


def _runs(conn: psycopg.Connection, now: datetime, stuck_after: timedelta) -> tuple[dict[str, Any], list[str]]:
    problems: list[str] = []
    running = []
    for run, kind, started, last_activity in conn.execute(
        """
        SELECT r.load_run_id, r.kind, r.started_at, greatest(r.started_at, max(f.updated_at))
        FROM etl.load_runs r LEFT JOIN etl.load_run_files f USING (load_run_id)
        WHERE r.status = 'running' GROUP BY r.load_run_id ORDER BY r.load_run_id
        """
    ).fetchall():
        stuck = now - last_activity > stuck_after
        running.append({"load_run_id": run, "kind": kind, "started_at": nz(started),
                        "age_hours": round((now - started).total_seconds() / 3600, 2),
                        "idle_hours": round((now - last_activity).total_seconds() / 3600, 2), "stuck": stuck})
        if stuck:
            problems.append(f"run {run} ({kind}) has been running for {running[-1]['age_hours']} h without "
                            f"progress for {running[-1]['idle_hours']} h: see `indici-ingest status {run}`")
    last = conn.execute(
        "SELECT load_run_id, kind, status, started_at, finished_at, error FROM etl.load_runs "
        "WHERE status <> 'running' ORDER BY finished_at DESC NULLS LAST, load_run_id DESC LIMIT 1"
    ).fetchone()
    last_run = None
    if last is not None:
        last_run = {"load_run_id": last[0], "kind": last[1], "status": last[2], "started_at": nz(last[3]),
                    "finished_at": nz(last[4]), "error": last[5]}
        if last[2] == "failed":
            problems.append(f"the last run, {last[0]} ({last[1]}), failed: {(last[5] or 'see its files')[:300]}")
    recent = [
        {"load_run_id": r[0], "kind": r[1], "status": r[2], "finished_at": nz(r[3]),
         "age_days": _days(now - r[3]) if r[3] else None, "error": r[4]}
        for r in conn.execute(
            "SELECT load_run_id, kind, status, finished_at, error FROM etl.load_runs "
            "WHERE status IN ('failed', 'partial') AND finished_at > %s ORDER BY load_run_id DESC LIMIT 10",
            (now - timedelta(days=RECENT_RUN_DAYS),),
        ).fetchall()
    ]
    return {"last": last_run, "running": running, "failed_or_partial_recently": recent}, problems


def health_report(conn: psycopg.Connection, now: datetime | None = None) -> dict[str, Any]:
    """The health JSON (see the module docstring); `now` for tests."""
    now = now or datetime.now(timezone.utc)
    specs = load_all()
    first_run = conn.execute("SELECT min(started_at) FROM etl.load_runs").fetchone()
    if first_run is None or first_run[0] is None:
        return {"status": "no_data", "checked_at": nz(now), "problems": ["no run has happened yet"],
                "warnings": [], "extracts": {}, "runs": {"last": None, "running": [], "failed_or_partial_recently": []}}
    system_age = now - first_run[0]
    stuck_after = timedelta(hours=float(config.get_value(conn, GLOBAL, "stuck_run_hours", default("stuck_run_hours"))))
    runs, problems = _runs(conn, now, stuck_after)
    warnings: list[str] = []

    last_success = _per_extract(conn, """
        SELECT DISTINCT ON (extract) extract, load_run_id, merged_at, date_extracted FROM etl.load_run_files
        WHERE status = 'merged' ORDER BY extract, merged_at DESC NULLS LAST, file_id DESC""")
    newest_in_core = _per_extract(conn, "SELECT extract, max(date_extracted) FROM etl.load_run_files "
                                        "WHERE status IN ('merged', 'duplicate') GROUP BY extract")
    delivered = _per_extract(conn, "SELECT extract, count(*) FROM etl.load_run_files GROUP BY extract")
    versions = _latest_versions(conn)
    by_extract: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for v in versions:
        by_extract[v["extract"]].append(v)
    newest_files = [v["file_id"] for v in versions if v["in_newest_batch"]]
    checks = _failed_checks(conn, newest_files, [s[0] for s in last_success.values()])
    checks_by_extract: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in checks:
        checks_by_extract[c["extract"]].append(c)
    anomalies = _anomalies(conn)

    extracts: dict[str, Any] = {}
    for name in sorted(specs):
        report: dict[str, Any] = {"state": "ok"}
        own_problems: list[str] = []
        own_warnings: list[str] = []
        expected = str(config.get_value(conn, name, "expected_delivery", default("expected_delivery")))
        period = DELIVERY_DAYS.get(expected, 7)
        grace = float(config.get_value(conn, name, "stale_grace_days", default("stale_grace_days")))
        stale_after = None if period is None else period + grace
        report["expected_delivery"] = expected
        report["stale_after_days"] = stale_after
        success = last_success.get(name)
        report["last_success"] = None if success is None else {
            "load_run_id": success[0], "merged_at": nz(success[1]), "date_extracted": nz(success[2])}
        newest = newest_in_core.get(name, (None,))[0]
        report["newest_date_extracted"] = nz(newest)
        report["age_days"] = _days(now - newest) if newest is not None else None

        failed_files = []
        loading = file_problem = stale = False
        for v in by_extract.get(name, []):
            where = "the newest batch" if v["in_newest_batch"] else "an older batch"
            file_ref = f"file {v['file_id']} ({v['s3_key']})"
            if v["status"] == "failed":
                failed_files.append({"file_id": v["file_id"], "s3_key": v["s3_key"], "load_run_id": v["load_run_id"],
                                     "date_extracted": nz(v["date_extracted"]), "newest_batch": v["in_newest_batch"],
                                     "error": v["error"]})
                reason = (v["error"] or "").removeprefix(v["s3_key"] + ": ")  # errors start with the key
                text = f"{file_ref} of {where} failed: {reason[:300]}"
            elif v["status"] in NOT_YET_IN_CORE and v["run_status"] != "running":
                text = (f"{file_ref} of {where} is not in core: left {v['status']} by run {v['load_run_id']} "
                        f"({v['run_status']}); the next run picks it up")
            else:
                loading = loading or v["status"] in NOT_YET_IN_CORE
                continue
            if v["in_newest_batch"]:
                own_problems.append(text)
                file_problem = True
            else:
                own_warnings.append(text)
        report["failed_files"] = failed_files

        if stale_after is not None:
            if newest is None:
                if system_age > timedelta(days=stale_after):
                    own_problems.append(f"never loaded, although runs have happened for {_days(system_age)} days "
                                        f"(expected {expected})")
                    file_problem = True
                else:
                    own_warnings.append("not loaded yet" + ("" if delivered.get(name) else " (no file delivered)"))
            elif now - newest > timedelta(days=stale_after):
                stale = True
                own_problems.append(f"stale: the newest batch in core was extracted {report['age_days']} days ago "
                                    f"(expected {expected}, stale after {stale_after:g} days)")
        report["failed_checks"] = checks_by_extract.get(name, [])
        failed_newest = {f["file_id"] for f in failed_files if f["newest_batch"]}
        for c in report["failed_checks"]:
            if c["file_id"] in failed_newest:
                continue  # already a problem: the check is why its file failed
            measured = (f": observed {c['observed']:g}, threshold {c['threshold']:g}"
                        if c["observed"] is not None and c["threshold"] is not None else "")
            column = f"({c['column']})" if c["column"] else ""
            own_warnings.append(f"check {c['check']}{column} failed{measured}")
        report["anomalies"] = anomalies.get(name, [])
        own_warnings += [f"anomaly: {a['message'].removeprefix(name + ': ')}" for a in report["anomalies"]
                         if a["message"]]

        if file_problem:
            report["state"] = "failing"
        elif stale:
            report["state"] = "stale"
        elif loading:
            report["state"] = "loading"
        elif newest is None:
            report["state"] = "never_loaded" if stale_after is not None else "not_expected"
        elif own_warnings:
            report["state"] = "warning"
        report["problems"], report["warnings"] = own_problems, own_warnings
        problems += [f"{name}: {p}" for p in own_problems]
        warnings += [f"{name}: {w}" for w in own_warnings]
        extracts[name] = report

    status = "failing" if problems else ("warning" if warnings else "ok")
    return {"status": status, "checked_at": nz(now), "problems": problems, "warnings": warnings,
            "runs": runs, "extracts": extracts}
