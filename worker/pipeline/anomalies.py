"""Anomalies: a run's load of an extract against the median of that extract's recent loads.

A *load* is the set of files of one extract that one run brought into core (etl.load_run_files rows of
the run with status 'merged'); a restage run's files are no load (they are earlier deliveries replayed).
Four metrics per load:

- rows: rows read;
- reject_rate: rows rejected / rows read;
- unmapped_domain_rate: rows holding at least one domain value that is not mapped / rows read;
- inferred_member_rate: dimension members the merge had to infer (a fact referenced a key the dimension
  did not have) / rows staged.

The baseline of a metric is its median over the extract's last `anomaly_baseline_loads` loads before
this one (the median, so that one full extract among weekly deltas does not move it). A metric is
checked once `anomaly_min_baseline_loads` loads exist; rates only when the load has at least
`min_rows_for_rates` rows. Rows are anomalous below median / `anomaly_rows_factor` or above
median x factor; a rate when it exceeds the median by its `anomaly_*_points` (a falling reject rate is
good news). Every setting is in etl.config, per extract or '*' (worker/pipeline/config_keys.py).

`evaluate_run(conn, run_id)` writes one etl.dq_results row per load and metric (check_name
'anomaly_<metric>', observed = the load's value, threshold = the bound it was held to, passed, detail
with the baseline) and returns the anomalies found. It runs in the caller's transaction and can be
called again for the same run (it replaces its rows). The unmapped-domain rate of earlier loads is read
from their stored rows (mappings change; the rate is the one seen when the load was evaluated).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from contracts.registry import load_all
from worker.pipeline import config, dq
from worker.pipeline.config_keys import default

CHECK_PREFIX = "anomaly_"
METRICS = ("rows", "reject_rate", "unmapped_domain_rate", "inferred_member_rate")
_RATE_POINTS = {
    "reject_rate": "anomaly_reject_rate_points",
    "unmapped_domain_rate": "anomaly_unmapped_rate_points",
    "inferred_member_rate": "anomaly_inferred_rate_points",
}


@dataclass(frozen=True)
class Anomaly:
    """A metric of one load outside its baseline."""

    load_run_id: int
    extract: str
    metric: str
    observed: float
    baseline_median: float
    baseline_loads: int
    bound: float
    direction: str  # below | above

    @property
    def message(self) -> str:
        def fmt(value: float) -> str:
            return f"{value:,.0f}" if self.metric == "rows" else f"{value:.1%}"

        return (f"{self.extract}: {self.metric.replace('_', ' ')} {fmt(self.observed)} is {self.direction} "
                f"{fmt(self.bound)} (median of the last {self.baseline_loads} loads: {fmt(self.baseline_median)})")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "message": self.message}


@dataclass(frozen=True)
class LoadMetrics:
    load_run_id: int
    extract: str
    rows: int
    staged: int
    values: dict[str, float | None]  # metric -> value (None: not known for this load)


def _loads(conn: psycopg.Connection, extract: str | None, run_id: int | None, before: int | None,
           limit: int | None) -> list[tuple[int, str, int, int, int, list[int]]]:
    """(run, extract, rows read, staged, rejected, file ids) of merged loads, newest run first."""
    # A restage run (worker/pipeline/restage.py) replays files of earlier deliveries: not a load of its
    # own to judge, nor one to judge others by.
    conditions = [sql.SQL("status = 'merged'"), sql.SQL(
        "NOT EXISTS (SELECT 1 FROM etl.load_runs r WHERE r.load_run_id = etl.load_run_files.load_run_id "
        "AND r.kind = 'restage')")]
    params: list[Any] = []
    if extract is not None:
        conditions.append(sql.SQL("extract = %s"))
        params.append(extract)
    if run_id is not None:
        conditions.append(sql.SQL("load_run_id = %s"))
        params.append(run_id)
    if before is not None:
        conditions.append(sql.SQL("load_run_id < %s"))
        params.append(before)
    query = sql.SQL(
        "SELECT load_run_id, extract, coalesce(sum(rows_read), 0)::bigint, coalesce(sum(rows_staged), 0)::bigint, "
        "coalesce(sum(rows_rejected), 0)::bigint, array_agg(file_id ORDER BY file_id) "
        "FROM etl.load_run_files WHERE {} GROUP BY load_run_id, extract ORDER BY load_run_id DESC, extract{}"
    ).format(sql.SQL(" AND ").join(conditions), sql.SQL(" LIMIT %s") if limit is not None else sql.SQL(""))
    if limit is not None:
        params.append(limit)
    return [tuple(r) for r in conn.execute(query, params).fetchall()]


def _inferred(conn: psycopg.Connection, extract: str, run_ids: list[int]) -> dict[int, float]:
    rows = conn.execute(
        "SELECT load_run_id, sum(observed) FROM etl.dq_results WHERE extract = %s AND check_name = 'inferred_members' "
        "AND load_run_id = ANY(%s) GROUP BY load_run_id",
        (extract, run_ids),
    ).fetchall()
    return {r[0]: float(r[1]) for r in rows}


def _stored_unmapped(conn: psycopg.Connection, extract: str, run_ids: list[int]) -> dict[int, float]:
    rows = conn.execute(
        "SELECT load_run_id, observed FROM etl.dq_results WHERE extract = %s AND check_name = %s "
        "AND load_run_id = ANY(%s) AND observed IS NOT NULL",
        (extract, CHECK_PREFIX + "unmapped_domain_rate", run_ids),
    ).fetchall()
    return {r[0]: float(r[1]) for r in rows}


def _unmapped_rows(conn: psycopg.Connection, extract: str, file_ids: list[int]) -> int:
    """Rows of the files holding a domain value that is not mapped. Staging counted them per file
    (dq.UNMAPPED_ROWS_CHECK, as the values were mapped then); only a file staged without that count
    (before it was recorded) is counted from raw here, and only if staging found unmapped values in it."""
    statement = dq.unmapped_rows_statement(load_all()[extract])
    if statement is None:
        return 0
    counted: dict[int, float] = {int(f): float(n) for f, n in conn.execute(
        "SELECT file_id, observed FROM etl.dq_results WHERE file_id = ANY(%s) AND check_name = %s",
        (file_ids, dq.UNMAPPED_ROWS_CHECK),
    ).fetchall()}
    total = int(sum(counted.values()))
    flagged = [r[0] for r in conn.execute(
        "SELECT DISTINCT file_id FROM etl.dq_results WHERE file_id = ANY(%s) AND check_name = 'unmapped_domain_values'",
        (file_ids,),
    ).fetchall() if r[0] not in counted]
    if not flagged:
        return total
    row = conn.execute(statement, (flagged,)).fetchone()
    return total + (int(row[0]) if row else 0)


def _metrics(conn: psycopg.Connection, loads: list[tuple[int, str, int, int, int, list[int]]],
             current: bool) -> list[LoadMetrics]:
    if not loads:
        return []
    extract = loads[0][1]
    run_ids = [load[0] for load in loads]
    inferred = _inferred(conn, extract, run_ids)
    stored = {} if current else _stored_unmapped(conn, extract, run_ids)
    out = []
    for run, _, rows, staged, rejected, file_ids in loads:
        if current:
            unmapped: float | None = _unmapped_rows(conn, extract, file_ids) / rows if rows else 0.0
        else:
            unmapped = stored.get(run)
        out.append(LoadMetrics(run, extract, rows, staged, {
            "rows": float(rows),
            "reject_rate": rejected / rows if rows else 0.0,
            "unmapped_domain_rate": unmapped,
            "inferred_member_rate": inferred.get(run, 0.0) / staged if staged else 0.0,
        }))
    return out


def _check(conn: psycopg.Connection, load: LoadMetrics, baseline: list[LoadMetrics], metric: str
           ) -> tuple[bool, float | None, dict[str, Any], Anomaly | None]:
    """(passed, bound, detail, anomaly) of one metric."""
    extract = load.extract
    need = int(config.get_value(conn, extract, "anomaly_min_baseline_loads", default("anomaly_min_baseline_loads")))
    history = [(b.load_run_id, b.values[metric]) for b in baseline if b.values[metric] is not None]
    detail: dict[str, Any] = {"baseline_run_ids": [r for r, _ in history]}
    if len(history) < need:
        detail["not_applied"] = f"{len(history)} earlier loads, {need} needed"
        return True, None, detail, None
    min_rows = int(config.get_value(conn, extract, "min_rows_for_rates", load_all()[extract].dq.min_rows_for_rates))
    if metric != "rows" and load.rows < min_rows:
        detail["not_applied"] = f"fewer than {min_rows} rows"
        return True, None, detail, None
    median = float(statistics.median(v for _, v in history if v is not None))
    observed = load.values[metric]
    assert observed is not None  # the current load always has every metric
    detail["baseline_median"] = median
    direction = ""
    if metric == "rows":
        factor = float(config.get_value(conn, extract, "anomaly_rows_factor", default("anomaly_rows_factor")))
        detail["tolerance"] = factor
        if median <= 0:
            detail["not_applied"] = "the baseline has no rows"
            return True, None, detail, None
        low, high = median / factor, median * factor
        if observed < low:
            direction, bound = "below", low
        elif observed > high:
            direction, bound = "above", high
        else:
            bound = low  # the bound that matters most: a drop in rows is the usual delivery fault
    else:
        points = float(config.get_value(conn, extract, _RATE_POINTS[metric], default(_RATE_POINTS[metric])))
        detail["tolerance"] = points
        bound = median + points
        if observed > bound:
            direction = "above"
    if not direction:
        return True, bound, detail, None
    anomaly = Anomaly(load.load_run_id, extract, metric, observed, median, len(history), bound, direction)
    detail["message"] = anomaly.message
    return False, bound, detail, anomaly


def evaluate_load(conn: psycopg.Connection, run_id: int, extract: str) -> list[Anomaly]:
    """Evaluate (and store) the metrics of one run's load of one extract."""
    current = _metrics(conn, _loads(conn, extract, run_id, None, None), current=True)
    if not current:
        return []
    (load,) = current
    n = int(config.get_value(conn, extract, "anomaly_baseline_loads", default("anomaly_baseline_loads")))
    baseline = _metrics(conn, _loads(conn, extract, None, run_id, n), current=False)
    conn.execute("DELETE FROM etl.dq_results WHERE load_run_id = %s AND extract = %s AND check_name LIKE %s",
                 (run_id, extract, CHECK_PREFIX + "%"))
    found: list[Anomaly] = []
    rows = []
    for metric in METRICS:
        passed, bound, detail, anomaly = _check(conn, load, baseline, metric)
        rows.append((run_id, extract, CHECK_PREFIX + metric, load.values[metric], bound, passed, Jsonb(detail)))
        if anomaly is not None:
            found.append(anomaly)
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO etl.dq_results (load_run_id, extract, check_name, observed, threshold, passed, detail) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            rows,
        )
    return found


def evaluate_run(conn: psycopg.Connection, run_id: int) -> list[Anomaly]:
    """Evaluate every extract the run loaded into core; returns the anomalies (also in etl.dq_results)."""
    extracts = sorted({load[1] for load in _loads(conn, None, run_id, None, None)})
    found: list[Anomaly] = []
    for extract in extracts:
        found += evaluate_load(conn, run_id, extract)
    return found
