"""The typing engine reads a landed file's raw rows on a second connection while it types (issue 7):
it must see exactly the rows the ledger counted, and fall back to the file's own connection when it
does not (rows this transaction wrote itself)."""

from __future__ import annotations

import dataclasses

import pytest
from psycopg import sql

from contracts.registry import get as get_spec
from tests.integration.worker.pipeline.helpers import put_file, query
from worker.io.db import connect
from worker.io.s3 import make_client
from worker.pipeline import ledger, lifecycle
from worker.pipeline.land import LINEAGE_PREFIX_COLUMNS
from worker.pipeline.run import Selection, plan_run
from worker.pipeline.typing_engine.stage import stage_rows
from worker.synth import build_series

pytestmark = pytest.mark.integration

SPEC = get_spec("Appointments")


@pytest.fixture()
def landed(pipeline_settings):
    """One generated Appointments file, landed (committed) and not staged: (settings, its record)."""
    s = pipeline_settings
    (batch,) = build_series(seed=5, patients=300, practices=[(685146, 535)], deltas=0, extracts=["Appointments"])
    (generated,) = batch.files
    put_file(make_client(s), s.s3_bucket, generated.name, generated.data)
    with connect(s) as conn:
        plan = plan_run(conn, make_client(s), s, Selection())
        (file_id,) = plan.file_ids
        assert lifecycle.land_file(conn, make_client(s), file_id, s, stage=False).status == "landed"
        conn.commit()
        record = ledger.get(conn, file_id)
        conn.commit()
    assert record.rows_raw and record.rows_raw > 100
    return s, record


def test_a_committed_landing_is_read_on_the_second_connection(landed):
    s, record = landed
    with connect(s) as conn:
        result = stage_rows(conn, SPEC, record)
        staged_here = conn.execute("SELECT count(*) FROM stg.appointments WHERE load_file_id = %s",
                                   (record.file_id,)).fetchone()[0]
        conn.rollback()
    assert "spool" not in result.seconds and "raw_not_visible" not in result.seconds
    assert result.staged + result.rejected == record.rows_raw == staged_here + result.rejected


def test_rows_the_second_connection_does_not_see_as_counted_fall_back_to_the_own_connection(landed):
    """The ledger counts one more row than is committed (a raw row this transaction wrote itself, a copy
    of row 1 under a later row number): the streamed pass is rolled back and the file is typed from the
    transaction's own view, where the copy supersedes row 1 by the duplicate-key rule."""
    s, record = landed
    with connect(s) as conn:
        copied = sql.SQL(", ").join(sql.Identifier(c) for c in [*LINEAGE_PREFIX_COLUMNS, *SPEC.column_names])
        statement = sql.SQL("INSERT INTO raw.appointments_raw ({cols}, row_number) SELECT {cols}, "
                            "row_number + 100000 FROM raw.appointments_raw WHERE load_file_id = %s "
                            "AND row_number = 1").format(cols=copied)
        conn.execute(statement, (record.file_id,))
        result = stage_rows(conn, SPEC, dataclasses.replace(record, rows_raw=record.rows_raw + 1))
        rows = conn.execute("SELECT count(*), max(row_number) FROM stg.appointments WHERE load_file_id = %s",
                            (record.file_id,)).fetchone()
        conn.rollback()
    assert "raw_not_visible" in result.seconds
    assert result.staged + result.rejected + result.superseded == record.rows_raw + 1
    assert result.superseded == 1
    assert rows[0] == result.staged and rows[1] == 100001
    assert query(s, "SELECT count(*) FROM stg.appointments") == [(0,)]
