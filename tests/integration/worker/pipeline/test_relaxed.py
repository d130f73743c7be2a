"""Relaxed thresholds for a DateExtracted window: a file of the window passes with the relaxed value,
a file outside it is held to the ordinary one, and each use is in the checks, the run's summary and its
notification."""

from __future__ import annotations

import pytest

from contracts.registry import get as get_spec
from tests.integration.worker.pipeline.helpers import put_file, query, run
from worker.io.db import connect
from worker.io.indici_reader import encode_rows
from worker.io.s3 import make_client
from worker.pipeline import operator
from worker.pipeline.notify import build_run_message
from worker.pipeline.run import Selection
from worker.synth import build_series

# These tests set operator values: they start from migrate's etl.config and leave it so.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("default_config")]


def test_a_window_relaxes_only_its_files_and_every_use_is_recorded(pipeline_settings):
    settings = pipeline_settings
    spec = get_spec("Patients")
    batches = build_series(seed=13, patients=20, practices=[(685146, 535)], deltas=1, extracts=["Patients"])
    s3 = make_client(settings)
    for batch in batches:
        rows = [list(r) for r in batch.file("Patients").rows]
        for row in rows[:3]:  # 3 of about 20 rows rejected: over the contract's 5%, under 50%
            row[spec.column_names.index("patient_id")] = ""
        put_file(s3, settings.s3_bucket, batch.file("Patients").name, encode_rows(rows))
    old, new = (b.date_extracted for b in batches)
    with connect(settings) as conn:
        operator.set_config(conn, "Patients", "min_rows_for_rates", 1, "test")
        operator.set_config(conn, "Patients", "relaxed_thresholds",
                            {"from": old.date().isoformat(), "to": old.date().isoformat(), "max_reject_rate": 0.5,
                             "reason": "history backfill"}, "ana")
        conn.commit()
    summary = run(settings, Selection(kind="backfill", date_from=old.date(), date_to=new.date()))
    assert summary["status"] == "partial", summary

    by_date = {d.strftime("%Y%m%d"): s for d, s in query(
        settings, "SELECT date_extracted AT TIME ZONE 'Pacific/Auckland', status FROM etl.load_run_files")}
    assert by_date == {old.strftime("%Y%m%d"): "merged", new.strftime("%Y%m%d"): "failed"}
    (use,) = summary["relaxed_thresholds"]
    assert use["extract"] == "Patients" and use["check"] == "reject_rate" and use["passed"] is True
    assert use["threshold"] == 0.5 and use["reason"] == "history backfill"
    assert use["window"] == {"from": old.date().isoformat(), "to": old.date().isoformat()}
    checks = query(settings, "SELECT threshold, passed, detail -> 'relaxed' FROM etl.dq_results "
                   "WHERE check_name = 'reject_rate' ORDER BY file_id")
    assert [(float(t), p) for t, p, _ in checks] == [(0.5, True), (0.05, False)]
    assert checks[0][2]["ordinary"] == 0.05 and checks[0][2]["relaxed"] == 0.5 and checks[1][2] is None
    with connect(settings) as conn:
        body = build_run_message(conn, summary["load_run_id"]).body
    assert f"Relaxed threshold: file {use['file_id']} held to a relaxed reject_rate 0.5" in body
    assert "history backfill" in body
