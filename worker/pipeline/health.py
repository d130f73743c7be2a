"""The health report: last successful run per extract, anomalies, and an overall status."""

from __future__ import annotations

from typing import Any

import psycopg

from contracts.registry import load_all


def health_report(conn: psycopg.Connection) -> dict[str, Any]:
    rows = conn.execute(
        "SELECT extract, last_success_run_id, last_success_at, last_date_extracted, status, anomalies "
        "FROM etl.health ORDER BY extract"
    ).fetchall()
    extracts = {
        r[0]: {
            "last_success_run_id": r[1],
            "last_success_at": r[2].isoformat() if r[2] else None,
            "last_date_extracted": r[3].isoformat() if r[3] else None,
            "status": r[4],
            "anomalies": r[5],
        }
        for r in rows
    }
    never = sorted(set(load_all()) - set(extracts))
    failing = sorted(e for e, h in extracts.items() if h["status"] != "ok")
    last_run = conn.execute(
        "SELECT load_run_id, status, started_at, finished_at FROM etl.load_runs ORDER BY load_run_id DESC LIMIT 1"
    ).fetchone()
    status = "ok" if not failing and extracts else ("failing" if failing else "no_data")
    return {
        "status": status,
        "failing_extracts": failing,
        "never_loaded": never,
        "last_run": None if last_run is None else {
            "load_run_id": last_run[0], "status": last_run[1],
            "started_at": last_run[2].isoformat(), "finished_at": last_run[3].isoformat() if last_run[3] else None,
        },
        "extracts": extracts,
    }
