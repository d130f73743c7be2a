"""Data-quality results of one staged file (etl.dq_results), computed with set-based queries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from contracts import naming
from contracts.model import ExtractSpec
from worker.pipeline import config, relaxed

# Per file: rows holding at least one domain value that was not mapped when the file was staged.
UNMAPPED_ROWS_CHECK = "unmapped_domain_rows"


@dataclass
class Check:
    check_name: str
    passed: bool
    observed: float | None = None
    threshold: float | None = None
    column_name: str | None = None
    rule: str | None = None
    detail: dict[str, Any] | None = None


@dataclass
class DqOutcome:
    checks: list[Check] = field(default_factory=list)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


def _rule_counts(conn, spec: ExtractSpec, file_id: int) -> list[tuple[str | None, str, str, int]]:
    query = sql.SQL(
        """
        SELECT e ->> 'column', e ->> 'rule', e ->> 'severity', count(*)
        FROM (
            SELECT jsonb_array_elements(field_errors) AS e FROM {rejects} WHERE load_file_id = %(f)s
            UNION ALL
            SELECT jsonb_array_elements(field_errors) FROM {stg}
            WHERE load_file_id = %(f)s AND field_errors IS NOT NULL
        ) errors
        GROUP BY 1, 2, 3 ORDER BY 1, 2
        """
    ).format(
        rejects=sql.Identifier(naming.ETL, naming.rejects_table(spec)),
        stg=sql.Identifier(naming.STG, naming.stg_table(spec)),
    )
    return conn.execute(query, {"f": file_id}).fetchall()


def _share(conn, table: sql.Identifier, file_id: int, columns: list[str], condition: str) -> dict[str, float]:
    """Per column, the share of the file's rows in `table` for which `condition` ({} = the column) holds."""
    if not columns:
        return {}
    shares = sql.SQL(", ").join(
        sql.SQL("avg(CASE WHEN " + condition + " THEN 1.0 ELSE 0.0 END)").format(sql.Identifier(c)) for c in columns
    )
    row = conn.execute(sql.SQL("SELECT {} FROM {} WHERE load_file_id = %s").format(shares, table), (file_id,)).fetchone()
    return {c: float(v) if v is not None else 0.0 for c, v in zip(columns, row)}


def _empty_rates(conn, spec: ExtractSpec, file_id: int, columns: list[str]) -> dict[str, float]:
    """Empty values in raw (before any rule), for required and key columns."""
    return _share(conn, sql.Identifier(naming.RAW, naming.raw_table(spec)), file_id, columns, "btrim({}) = ''")


def _stg_null_rates(conn, spec: ExtractSpec, file_id: int, columns: list[str]) -> dict[str, float]:
    """NULLs in stg (empty or nullified), for the columns with a max_null_rate threshold."""
    return _share(conn, sql.Identifier(naming.STG, naming.stg_table(spec)), file_id, columns, "{} IS NULL")


def record_domain_values(conn, spec: ExtractSpec, file_id: int) -> None:
    """Add every value seen in a domain column to its mapping table (unmapped until curated)."""
    for col in spec.columns:
        if not col.domain:
            continue
        conn.execute(
            sql.SQL(
                "INSERT INTO {domain} (value, first_seen_file_id) "
                "SELECT DISTINCT {col}, %(f)s FROM {raw} WHERE load_file_id = %(f)s AND {col} <> '' "
                "ON CONFLICT (value) DO UPDATE SET last_seen_at = now()"
            ).format(
                domain=sql.Identifier(naming.ETL, naming.domain_table(col.domain)),
                col=sql.Identifier(col.column),
                raw=sql.Identifier(naming.RAW, naming.raw_table(spec)),
            ),
            {"f": file_id},
        )


def record_domain_values_seen(conn, spec: ExtractSpec, file_id: int, seen: dict[str, set[str]]) -> None:
    """record_domain_values for values the typing engine collected (distinct raw values <> '')."""
    for col in spec.columns:
        if not col.domain or not seen.get(col.column):
            continue
        conn.execute(
            sql.SQL(
                "INSERT INTO {domain} (value, first_seen_file_id) "
                "SELECT DISTINCT v, %(f)s FROM unnest(%(values)s::text[]) AS t(v) "
                "ON CONFLICT (value) DO UPDATE SET last_seen_at = now()"
            ).format(domain=sql.Identifier(naming.ETL, naming.domain_table(col.domain))),
            {"f": file_id, "values": sorted(seen[col.column])},
        )


def _unmapped_seen(conn, spec: ExtractSpec, seen: dict[str, set[str]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for col in spec.columns:
        if not col.domain or not seen.get(col.column):
            continue
        rows = conn.execute(
            sql.SQL("SELECT value FROM {} WHERE value = ANY(%s::text[]) AND NOT is_mapped ORDER BY 1 LIMIT 50").format(
                sql.Identifier(naming.ETL, naming.domain_table(col.domain))
            ),
            (sorted(seen[col.column]),),
        ).fetchall()
        if rows:
            found[col.column] = [r[0] for r in rows]
    return found


def _unmapped(conn, spec: ExtractSpec, file_id: int) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for col in spec.columns:
        if not col.domain:
            continue
        rows = conn.execute(
            sql.SQL(
                "SELECT DISTINCT r.{col} FROM {raw} r JOIN {domain} d ON d.value = r.{col} "
                "WHERE r.load_file_id = %s AND NOT d.is_mapped ORDER BY 1 LIMIT 50"
            ).format(
                col=sql.Identifier(col.column),
                raw=sql.Identifier(naming.RAW, naming.raw_table(spec)),
                domain=sql.Identifier(naming.ETL, naming.domain_table(col.domain)),
            ),
            (file_id,),
        ).fetchall()
        if rows:
            found[col.column] = [r[0] for r in rows]
    return found


def unmapped_rows_statement(spec: ExtractSpec) -> sql.Composed | None:
    """count(*) of the raw rows of the files %s (an array) holding at least one domain value that is
    not mapped; None when the extract has no domain column."""
    domain_columns = [c for c in spec.columns if c.domain]
    if not domain_columns:
        return None
    unmapped = sql.SQL(" OR ").join(
        sql.SQL("EXISTS (SELECT 1 FROM {d} WHERE {d}.value = r.{c} AND NOT {d}.is_mapped)").format(
            d=sql.Identifier(naming.ETL, naming.domain_table(str(c.domain))), c=sql.Identifier(c.column))
        for c in domain_columns
    )
    return sql.SQL("SELECT count(*) FROM {raw} r WHERE r.load_file_id = ANY(%s) AND ({unmapped})").format(
        raw=sql.Identifier(naming.RAW, naming.raw_table(spec)), unmapped=unmapped)


def _unmapped_rows(conn, spec: ExtractSpec, file_id: int) -> int | None:
    statement = unmapped_rows_statement(spec)
    if statement is None:
        return None
    row = conn.execute(statement, ([file_id],)).fetchone()
    return int(row[0]) if row else 0


def evaluate(conn, spec: ExtractSpec, file_id: int, rows_read: int, staged: int, rejected: int,
             superseded: int) -> DqOutcome:
    """Compute the checks of one file (no writes), with set-based queries over raw, stg and rejects."""
    required = [c.column for c in spec.columns if c.required or c.column in spec.natural_key]
    held_to = relaxed.for_file(conn, spec, file_id)  # ops (issue 9): a window's relaxed thresholds, recorded
    limits = held_to.max_null_rate
    return _outcome(
        conn, spec, held_to, rows_read, staged, rejected, superseded,
        rule_counts=_rule_counts(conn, spec, file_id),
        empty_rates=_empty_rates(conn, spec, file_id, required),
        null_rates=_stg_null_rates(conn, spec, file_id, sorted(limits)),
        unmapped=_unmapped(conn, spec, file_id),
        unmapped_rows=_unmapped_rows(conn, spec, file_id),
        limits=limits,
    )


def evaluate_counts(conn, spec: ExtractSpec, file_id: int, rows_read: int, staged: int, rejected: int,
                    superseded: int, counts) -> DqOutcome:
    """The same checks as `evaluate`, from the counts the typing engine collected while it typed the
    file (worker.pipeline.typing_engine.DqCounts); only the domain tables and config are queried."""
    required = [c.column for c in spec.columns if c.required or c.column in spec.natural_key]
    held_to = relaxed.for_file(conn, spec, file_id)  # ops (issue 9): a window's relaxed thresholds, recorded
    limits = held_to.max_null_rate

    def share(n: int, of: int) -> float:
        return n / of if of else 0.0

    rule_counts = sorted(
        ((column, rule, severity, n) for (column, rule, severity), n in counts.rule_violations.items() if n),
        key=lambda r: (r[0] is None, r[0] or "", r[1]),
    )
    return _outcome(
        conn, spec, held_to, rows_read, staged, rejected, superseded,
        rule_counts=rule_counts,
        empty_rates={c: share(counts.empty[c], rows_read) for c in required},
        null_rates={c: share(counts.stg_nulls[c], staged) for c in sorted(limits)},
        unmapped=_unmapped_seen(conn, spec, counts.domain_values),
        unmapped_rows=counts.unmapped_rows if any(c.domain for c in spec.columns) else None,
        limits=limits,
    )


def _outcome(conn, spec: ExtractSpec, held_to: relaxed.Thresholds, rows_read: int, staged: int, rejected: int,
             superseded: int, *, rule_counts, empty_rates: dict[str, float], null_rates: dict[str, float],
             unmapped: dict[str, list[str]], unmapped_rows: int | None, limits) -> DqOutcome:
    outcome = DqOutcome()
    max_reject_rate = held_to.max_reject_rate
    reject_rate = (rejected / rows_read) if rows_read else 0.0
    min_rows = int(config.get_value(conn, spec.extract, "min_rows_for_rates", spec.dq.min_rows_for_rates))
    rates_apply = rows_read >= min_rows
    outcome.checks += [
        Check("rows_read", True, rows_read),
        Check("rows_staged", True, staged),
        Check("rows_rejected", True, rejected),
        Check("rows_superseded", True, superseded),
        Check("reconciliation", rows_read == staged + rejected + superseded, staged + rejected + superseded,
              rows_read),
        Check("reject_rate", reject_rate <= max_reject_rate or not rates_apply, reject_rate, max_reject_rate,
              detail={**({} if rates_apply else {"not_applied": f"fewer than {min_rows} rows"}),
                      **relaxed.detail(held_to, "max_reject_rate")} or None),
    ]
    for column, rule, severity, count in rule_counts:
        outcome.checks.append(
            Check("rule_violations", True, count, column_name=column, rule=rule, detail={"severity": severity})
        )
    for column, rate in empty_rates.items():
        outcome.checks.append(Check("empty_rate", True, rate, column_name=column, rule="required"))
    for column, rate in null_rates.items():
        outcome.checks.append(
            Check("null_rate", rate <= float(limits[column]) or not rates_apply, rate, float(limits[column]),
                  column_name=column, detail=relaxed.detail(held_to, "max_null_rate", column) or None)
        )
    if unmapped_rows is not None:
        # Rows holding an unmapped domain value as the file was staged: the anomaly hook's
        # unmapped_domain_rate reads it when the run closes instead of scanning raw again.
        outcome.checks.append(Check(UNMAPPED_ROWS_CHECK, True, unmapped_rows))
    for column, values in unmapped.items():
        outcome.checks.append(
            Check("unmapped_domain_values", True, len(values), column_name=column,
                  rule=spec.column(column).domain, detail={"values": values})
        )
    return outcome


def store(conn, run_id: int, file_id: int, extract: str, outcome: DqOutcome) -> None:
    conn.execute("DELETE FROM etl.dq_results WHERE file_id = %s", (file_id,))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO etl.dq_results (load_run_id, file_id, extract, check_name, column_name, rule, "
            "observed, threshold, passed, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (run_id, file_id, extract, c.check_name, c.column_name, c.rule, c.observed, c.threshold,
                 c.passed, Jsonb(c.detail) if c.detail is not None else None)
                for c in outcome.checks
            ],
        )
