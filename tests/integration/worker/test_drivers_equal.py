"""The two drivers of a run (`--inline` and the Celery tasks) end the same: the same generated batches
loaded inline and through a real Celery worker leave the audit tables (etl), raw, stg and core equal,
ids, timestamps and durations aside.

The worker and its bucket are test_celery.py's module fixtures (one worker for this module).
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from tests.integration.worker.pipeline.helpers import put_file, reset_data
from tests.integration.worker.test_celery import Stack, _empty_bucket, _summary
from tests.integration.worker.test_celery import stack as stack  # noqa: F401 - the module's worker fixture
from worker.io.db import connect
from worker.io.s3 import make_client
from worker.pipeline.run import Selection, run_inline
from worker.synth import build_series

pytestmark = pytest.mark.integration

# Surrogate ids and bookkeeping columns that differ between two loads of the same files by design.
VOLATILE = {"load_run_id", "file_id", "load_file_id", "duplicate_of", "superseded_by", "notification_id",
            "request_id", "action_id", "params", "leased_by", "lease_expires_at", "last_success_run_id",
            "stg_id", "reject_id", "dq_result_id", "skipped_id", "version_id_seq",
            "first_seen_file_id"}  # which file saw a domain value first: Celery stages files in parallel
DROPPED_TABLES = {"etl.notifications", "etl.operator_actions"}


def _volatile(name: str, data_type: str) -> bool:
    return name in VOLATILE or (name.endswith("_at") and "timestamp" in data_type)


def _scrub(value: Any) -> Any:
    """JSON without durations and ids (the run summary's `seconds`, the merge's timings)."""
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()
                if "seconds" not in k and k not in ("steps", "timings", "file_id", "load_run_id")}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def snapshot(url: str, exclude: frozenset[str] = frozenset()) -> dict[str, list[str]]:
    tables: dict[str, list[str]] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        listed = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "AND table_schema IN ('raw', 'stg', 'etl', 'core') ORDER BY 1, 2").fetchall()
        for schema, table in listed:
            name = f"{schema}.{table}"
            if name in DROPPED_TABLES:
                continue
            columns = conn.execute(
                "SELECT column_name, data_type, is_identity = 'YES' FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position", (schema, table)).fetchall()
            # A fact's own surrogate key numbers rows in the order one merge statement happened to insert
            # them (nothing references it); the row is its natural key. Dimension keys are compared: facts
            # name them, so they must agree.
            own_key = schema == "core" and table.startswith("fact_")
            kept = [c for c, t, identity in columns
                    if not _volatile(c, t) and c not in exclude and not (own_key and identity)]
            if not kept:
                continue
            query = psycopg.sql.SQL("SELECT {} FROM {}").format(  # as text: '-infinity' has no Python value
                psycopg.sql.SQL(", ").join(psycopg.sql.SQL("{}::text").format(psycopg.sql.Identifier(c))
                                           for c in kept),
                psycopg.sql.Identifier(schema, table))
            rows = []
            for row in conn.execute(query).fetchall():
                rows.append(json.dumps([_scrub(json.loads(v)) if v and v[:1] in "{[" else v for v in row],
                                       default=str, sort_keys=True))
            tables[name] = sorted(rows)
    return tables


def _upload(stack: Stack) -> int:
    batches = build_series(seed=808, patients=12, practices=[(685146, 535)], deltas=1,
                           extracts=["Patients", "Providers", "Appointments", "Vaccine", "Medicine"],
                           faults={"truncated_last_row": 1})  # one bad file: the run ends partial
    s3 = make_client(stack.settings)
    count = 0
    for batch in batches:
        for f in batch.files:
            put_file(s3, stack.settings.s3_bucket, f.name, f.data)
            count += 1
    # A key written twice with the same bytes under a new version: one version is superseded.
    first = batches[0].files[0]
    put_file(s3, stack.settings.s3_bucket, first.name, first.data)
    return count


def test_inline_and_celery_runs_leave_equal_audit_and_core(stack):  # noqa: F811
    url = stack.settings.database_url.get_secret_value()
    reset_data(url)
    _empty_bucket(stack.settings)
    files = _upload(stack)

    with connect(stack.settings) as conn:
        inline = run_inline(conn, make_client(stack.settings), stack.settings, Selection())
    inline_tables = snapshot(url)

    reset_data(url)
    done = stack.cli("--log-level", "ERROR", "run", "--wait", "--timeout", "120")
    celery = _summary(done.stdout)
    celery_tables = snapshot(url)

    assert inline["status"] == celery["status"] == "partial", (inline, done.stdout, done.stderr)
    # First night: every batch, not only the newest (both batches' files), and it says so.
    assert inline["files"] == files and inline["first_load"] and "every available batch" in inline["note"]
    assert inline["superseded_versions"] == 1
    assert _scrub(inline) == _scrub(celery)
    assert set(inline_tables) == set(celery_tables)
    different = [t for t in inline_tables if inline_tables[t] != celery_tables[t]]
    assert not different, {t: (sorted(set(inline_tables[t]) - set(celery_tables[t]))[:3],
                               sorted(set(celery_tables[t]) - set(inline_tables[t]))[:3]) for t in different}
    # The run's own rows are there to compare: ledger rows for every version considered.
    assert len(inline_tables["etl.load_run_files"]) == files + 1
    assert any('"superseded"' in row for row in inline_tables["etl.load_run_files"])
    assert sum(1 for t in inline_tables if t.startswith("core.") and inline_tables[t]) >= 3
