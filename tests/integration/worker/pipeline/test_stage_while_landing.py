"""Staging while landing (issue 7, one pass per file): the landing's own COPY blocks are typed into stg in
the landing's transaction. What it writes must be exactly what staging the same file from raw writes
(stg rows, rejects, data-quality results), a repeated natural key must still be resolved by the
duplicate-key rule, and when the pass cannot stage the file it must leave the file landed (raw kept,
nothing in stg) for the stage step, or, for a bad file, land nothing at all."""

from __future__ import annotations

import time

import pytest
from psycopg import sql

from contracts.registry import get as get_spec
from tests.integration.worker.pipeline.helpers import put_file, query
from worker.io.db import connect
from worker.io.indici_reader import encode_rows
from worker.io.s3 import make_client
from worker.pipeline import lifecycle
from worker.pipeline.restage import restage
from worker.pipeline.run import Selection, plan_run
from worker.pipeline.typing_engine import StagingTee
from worker.synth import build_series

pytestmark = pytest.mark.integration

SPEC = get_spec("Appointments")
# Values the landing must escape for COPY text and the pass must read back exactly (no quoting in COPY
# text: quotes are plain characters; `\N` is a value, not NULL).
AWKWARD = ["back\\slash", "tab\there", "line\nbreak", "carriage\rreturn", "\\N", "\\t literal", '"quoted"',
           "trailing backslash\\", "\\\\double", "Māori macron ā", "  padded  ", "a,b;c"]


def _rows(seed: int = 11, patients: int = 120) -> tuple[list[list[str]], str]:
    (batch,) = build_series(seed=seed, patients=patients, practices=[(685146, 535)], deltas=0,
                            extracts=["Appointments"])
    return [list(r) for r in batch.file("Appointments").rows], batch.file("Appointments").name


def _awkward(rows: list[list[str]]) -> list[list[str]]:
    """Escapes in every text column of some rows; bad values in typed columns of others (nullified or
    rejected by the contract, both with errors)."""
    text = [i for i, c in enumerate(SPEC.columns) if c.type.value == "text" and not c.domain]
    at = {c.column: i for i, c in enumerate(SPEC.columns)}
    for n, row in enumerate(rows[:len(AWKWARD)]):
        for i in text:
            row[i] = AWKWARD[(n + i) % len(AWKWARD)]
    rows[20][at["inserted_at"]] = "2024-02-30 10:00"  # nullified: not a date
    rows[21][at["schedule_date"]] = "tomorrow\\t"  # rejected: required timestamp
    rows[22][at["arrived"]] = "yes"  # nullified boolean
    rows[23][at["appointment_id"]] = ""  # rejected: key missing
    rows[24][at["duration"]] = "99999999999"  # nullified: beyond integer
    return rows


def _plan_one(settings, key: str, body: bytes) -> int:
    s3 = make_client(settings)
    put_file(s3, settings.s3_bucket, key, body)
    with connect(settings) as conn:
        (file_id,) = plan_run(conn, s3, settings, Selection()).file_ids
    return file_id


def _land(settings, file_id: int, stage: bool = True):
    with connect(settings) as conn:
        return lifecycle.land_file(conn, make_client(settings), file_id, settings, stage=stage)


def _staged(settings, file_id: int) -> dict[str, list[tuple]]:
    """What staging wrote for the file, without the run id (a restage is a run of its own)."""
    stg_columns = ["row_number", *SPEC.column_names, "field_errors", "s3_version_id", "file_hash", "date_extracted",
                   "date_to"]
    stg = sql.SQL("SELECT {} FROM stg.appointments WHERE load_file_id = %s ORDER BY row_number").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in stg_columns))
    return {
        "stg": query(settings, stg, (file_id,)),
        "rejects": query(settings, "SELECT row_number, row_text, field_errors FROM etl.rejects_appointments "
                                   "WHERE load_file_id = %s ORDER BY row_number", (file_id,)),
        "dq": query(settings, "SELECT check_name, column_name, observed, passed FROM etl.dq_results "
                              "WHERE file_id = %s ORDER BY check_name, column_name", (file_id,)),
        "ledger": query(settings, "SELECT rows_read, rows_raw, rows_staged, rows_rejected, rows_superseded "
                                  "FROM etl.load_run_files WHERE file_id = %s", (file_id,)),
    }


def test_a_file_staged_while_landing_is_staged_as_from_raw(pipeline_settings):
    s = pipeline_settings
    rows, name = _rows()
    file_id = _plan_one(s, name, encode_rows(_awkward(rows)))
    assert _land(s, file_id).status == "landed"
    # One transaction: the file went from pending to staged, and the stage step has nothing to do.
    assert query(s, "SELECT status FROM etl.load_run_files WHERE file_id = %s", (file_id,)) == [("staged",)]
    in_pass = _staged(s, file_id)
    assert len(in_pass["stg"]) + len(in_pass["rejects"]) == len(rows)
    assert len(in_pass["rejects"]) == 2 and in_pass["dq"]
    awkward_notes = query(s, "SELECT DISTINCT notes FROM raw.appointments_raw WHERE load_file_id = %s", (file_id,))
    assert set(AWKWARD) <= {r[0] for r in awkward_notes}  # raw holds them exactly

    with connect(s) as conn:  # the reference: the same raw rows staged again by the stage step
        summary = restage(conn, s, "Appointments")
    assert summary["status"] == "succeeded"
    assert _staged(s, file_id) == in_pass


def test_a_repeated_natural_key_is_resolved_in_the_same_pass(pipeline_settings):
    s = pipeline_settings
    rows, name = _rows(seed=12)
    repeated = [list(rows[3]), list(rows[7])]
    repeated[0][SPEC.column_names.index("notes")] = "the later copy wins"
    rows += repeated  # rows 3 and 7 again, later in the file
    file_id = _plan_one(s, name, encode_rows(rows))
    _land(s, file_id)
    assert query(s, "SELECT status, rows_superseded FROM etl.load_run_files WHERE file_id = %s",
                 (file_id,)) == [("staged", 2)]
    superseded = query(s, "SELECT row_number, field_errors -> 0 ->> 'rule' FROM etl.rejects_appointments "
                          "WHERE load_file_id = %s ORDER BY row_number", (file_id,))
    assert superseded == [(4, "duplicate_key"), (8, "duplicate_key")]
    key = SPEC.column_names.index("appointment_id")
    assert query(s, "SELECT notes, row_number FROM stg.appointments WHERE appointment_id = %s",
                 (int(rows[3][key]),)) == [("the later copy wins", len(rows) - 1)]
    in_pass = _staged(s, file_id)
    with connect(s) as conn:
        restage(conn, s, "Appointments")
    assert _staged(s, file_id) == in_pass


def test_a_failure_of_the_pass_leaves_the_file_landed_for_the_stage_step(pipeline_settings, monkeypatch):
    s = pipeline_settings
    rows, name = _rows(seed=13)
    file_id = _plan_one(s, name, encode_rows(rows))

    def broken(self, conn):
        conn.execute("INSERT INTO stg.appointments (load_file_id) VALUES (NULL)")  # fails: NOT NULL

    monkeypatch.setattr(StagingTee, "load", broken)
    assert _land(s, file_id).status == "landed"
    assert query(s, "SELECT status, rows_raw, rows_staged FROM etl.load_run_files WHERE file_id = %s",
                 (file_id,)) == [("landed", len(rows), None)]
    assert query(s, "SELECT count(*) FROM raw.appointments_raw") == [(len(rows),)]
    assert query(s, "SELECT count(*) FROM stg.appointments") == [(0,)]
    assert query(s, "SELECT count(*) FROM etl.dq_results") == [(0,)]
    monkeypatch.undo()
    with connect(s) as conn:
        assert lifecycle.stage_file(conn, file_id, s).status == "staged"
    assert query(s, "SELECT count(*) FROM stg.appointments") == [(len(rows),)]


def test_a_bad_file_lands_and_stages_nothing(pipeline_settings):
    s = pipeline_settings
    rows, name = _rows(seed=14)
    body = encode_rows(rows)
    file_id = _plan_one(s, name, body[: len(body) - 8])  # the last terminator cut off: truncated
    result = _land(s, file_id)
    assert result.status == "failed"
    assert f"row {len(rows)}:" in (result.error or "") and "terminator" in (result.error or "")
    assert query(s, "SELECT status FROM etl.load_run_files WHERE file_id = %s", (file_id,)) == [("failed",)]
    for table in ("raw.appointments_raw", "stg.appointments", "etl.rejects_appointments", "etl.dq_results"):
        assert query(s, f"SELECT count(*) FROM {table}") == [(0,)], table


@pytest.fixture
def typed_ahead(monkeypatch):
    """Small blocks, and a load that first waits until the typing ahead has typed every whole block fed
    (so the part typed while the raw COPY ran is known, not left to timing). Yields the loads' results."""
    from worker.pipeline.typing_engine import tee as tee_module

    block = 16 << 10
    monkeypatch.setattr(tee_module, "block_bytes", lambda spec, threads=1: block)
    loaded = []
    load = StagingTee.load

    def waiting_load(self, conn):
        ahead = self._ahead
        assert ahead is not None  # TYPING_DURING_RAW_COPY is on by default
        deadline = time.monotonic() + 60
        while self._written - ahead.typed_upto >= block and ahead.error is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        result = load(self, conn)
        loaded.append(result)
        return result

    monkeypatch.setattr(StagingTee, "load", waiting_load)
    return loaded


@pytest.mark.parametrize("repeat", [False, True])
def test_rows_typed_while_the_raw_copy_ran_are_staged_as_from_raw(pipeline_settings, typed_ahead, repeat):
    s = pipeline_settings
    rows, name = _rows(seed=15, patients=300)
    rows = _awkward(rows)
    if repeat:  # the second pass: what was typed ahead is rolled back and the file typed again
        rows += [list(rows[40]), list(rows[len(rows) // 2])]
    file_id = _plan_one(s, name, encode_rows(rows))
    assert _land(s, file_id).status == "landed"
    assert query(s, "SELECT status FROM etl.load_run_files WHERE file_id = %s", (file_id,)) == [("staged",)]
    (result,) = typed_ahead
    in_pass = _staged(s, file_id)
    assert len(in_pass["stg"]) + len(in_pass["rejects"]) == len(rows)
    if repeat:
        assert result.superseded == 2 and result.rows_typed_ahead == 0
    else:
        assert 0 < result.rows_typed_ahead < len(rows)  # several blocks typed ahead, the last one after
    with connect(s) as conn:
        restage(conn, s, "Appointments")
    assert _staged(s, file_id) == in_pass
