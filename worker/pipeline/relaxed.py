"""Relaxed thresholds for a window of history: etl.config `relaxed_thresholds` (per extract).

A backfill of old batches often meets messier data than this week's delivery (codes retired since,
columns the provider filled in later). Instead of raising an extract's thresholds for every file, an
operator sets, per extract,

    indici-ingest config set Patients relaxed_thresholds \
        '{"from": "2024-01-01", "to": "2024-12-31", "max_reject_rate": 0.2, "reason": "2024 backfill"}'

and only files whose DateExtracted (New Zealand date) falls in [from, to] are held to the relaxed
values; every other file keeps the ordinary ones. Each use is recorded: the file's reject_rate /
null_rate check in etl.dq_results carries `detail.relaxed` (the window, the ordinary and the relaxed
value), and the run's summary lists them under `relaxed_thresholds` (`uses(conn, run_id)`), as does
its notification. `config set Patients relaxed_thresholds null` ends the window early.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from contracts.model import ExtractSpec
from worker.pipeline import config
from worker.pipeline.nztime import NZ

KEY = "relaxed_thresholds"


@dataclass(frozen=True)
class Thresholds:
    max_reject_rate: float
    max_null_rate: dict[str, float]
    relaxed: dict[str, Any] | None  # what was relaxed, for the checks' detail; None: the ordinary values


def for_file(conn: psycopg.Connection, spec: ExtractSpec, file_id: int) -> Thresholds:
    """The thresholds a file is held to: the extract's, or the relaxed ones when its DateExtracted is in
    the extract's `relaxed_thresholds` window."""
    reject_rate = float(config.get_value(conn, spec.extract, "max_reject_rate", spec.dq.max_reject_rate))
    null_rates = {str(k): float(v) for k, v in
                  (config.get_value(conn, spec.extract, "max_null_rate", spec.dq.max_null_rate) or {}).items()}
    window = conn.execute("SELECT value FROM etl.config WHERE extract = %s AND key = %s",
                          (spec.extract, KEY)).fetchone()
    window = window[0] if window else None
    if not window:
        return Thresholds(reject_rate, null_rates, None)
    row = conn.execute("SELECT date_extracted FROM etl.load_run_files WHERE file_id = %s", (file_id,)).fetchone()
    if row is None or not (window["from"] <= row[0].astimezone(NZ).date().isoformat() <= window["to"]):
        return Thresholds(reject_rate, null_rates, None)
    relaxed: dict[str, Any] = {"window": {"from": window["from"], "to": window["to"]},
                               "reason": window.get("reason")}
    if "max_reject_rate" in window:
        relaxed["max_reject_rate"] = {"ordinary": reject_rate, "relaxed": float(window["max_reject_rate"])}
        reject_rate = float(window["max_reject_rate"])
    if "max_null_rate" in window:
        relaxed["max_null_rate"] = {column: {"ordinary": null_rates.get(column), "relaxed": float(limit)}
                                    for column, limit in window["max_null_rate"].items()}
        null_rates = {**null_rates, **{c: float(v) for c, v in window["max_null_rate"].items()}}
    return Thresholds(reject_rate, null_rates, relaxed)


def uses(conn: psycopg.Connection, run_id: int) -> list[dict[str, Any]]:
    """The relaxed thresholds the run's files were held to (from their checks in etl.dq_results)."""
    rows = conn.execute(
        """
        SELECT d.file_id, f.extract, f.s3_key, d.check_name, d.column_name, d.observed, d.threshold, d.passed,
               d.detail -> 'relaxed'
        FROM etl.dq_results d JOIN etl.load_run_files f ON f.file_id = d.file_id
        WHERE f.load_run_id = %s AND d.detail ? 'relaxed' ORDER BY d.file_id, d.check_name, d.column_name
        """,
        (run_id,),
    ).fetchall()
    return [{"file_id": file_id, "extract": extract, "s3_key": key, "check": check, "column": column,
             "observed": float(observed) if observed is not None else None,
             "threshold": float(threshold) if threshold is not None else None, "passed": passed,
             "window": relaxed.get("window"), "reason": relaxed.get("reason")}
            for file_id, extract, key, check, column, observed, threshold, passed, relaxed in rows]


def detail(thresholds: Thresholds, key: str, column: str | None = None) -> dict[str, Any]:
    """{"relaxed": ...} for a check's detail when its threshold was relaxed, else {}."""
    relaxed = thresholds.relaxed
    if relaxed is None or key not in relaxed or (column is not None and column not in relaxed[key]):
        return {}
    value = relaxed[key] if column is None else relaxed[key][column]
    return {"relaxed": {"window": relaxed["window"], "reason": relaxed["reason"], **value}}
