"""The health report tells the truth: computed from the ledger and runs, repaired by a later run, failing
when the newest delivered batch failed whatever ran last, stale by the expected delivery, stuck runs."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from tests.integration.worker.pipeline.helpers import put_file, query, run
from worker.io.db import connect
from worker.io.s3 import make_client
from worker.pipeline.health import health_report
from worker.pipeline.nztime import nz_local_to_utc
from worker.pipeline.run import Selection
from worker.synth import build_series

pytestmark = pytest.mark.integration

PRACTICE = [(685146, 535)]


def _upload(settings, files) -> None:
    s3 = make_client(settings)
    for f in files:
        put_file(s3, settings.s3_bucket, f.name, f.data)


def _report(settings, now: datetime) -> dict:
    with connect(settings) as conn:
        return health_report(conn, now)


def _day_after(batch) -> datetime:
    return nz_local_to_utc(batch.date_extracted) + timedelta(days=1)


def test_a_failed_merge_is_failing_and_the_next_run_repairs_it(pipeline_settings):
    (batch,) = build_series(seed=11, patients=5, practices=PRACTICE, deltas=0, extracts=["Vaccine"])
    _upload(pipeline_settings, batch.files)
    url = pipeline_settings.database_url.get_secret_value()
    with psycopg.connect(url, autocommit=True) as conn:  # the merge into core.dim_vaccine will fail
        conn.execute("ALTER TABLE core.dim_vaccine ADD CONSTRAINT test_refuses_rows CHECK (false) NOT VALID")
    try:
        first = run(pipeline_settings)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER TABLE core.dim_vaccine DROP CONSTRAINT test_refuses_rows")
    assert first["status"] == "failed"
    report = _report(pipeline_settings, _day_after(batch))
    assert report["status"] == "failing"
    vaccine = report["extracts"]["Vaccine"]
    assert vaccine["state"] == "failing" and vaccine["last_success"] is None
    assert any("not in core: left staged" in p for p in vaccine["problems"])
    assert any(p.startswith(f"the last run, {first['load_run_id']}") for p in report["problems"])

    second = run(pipeline_settings)  # nothing new: it merges what the failed run left staged
    assert second["status"] == "succeeded"
    report = _report(pipeline_settings, _day_after(batch))
    vaccine = report["extracts"]["Vaccine"]
    assert vaccine["state"] == "ok" and vaccine["problems"] == []
    # The file's own run (core's lineage names it too), merged into core by the second run.
    assert vaccine["last_success"]["load_run_id"] == first["load_run_id"] and vaccine["last_success"]["merged_at"]
    assert vaccine["newest_date_extracted"].endswith("+12:00") or vaccine["newest_date_extracted"].endswith("+13:00")
    assert not any(p.startswith("Vaccine") or p.startswith("the last run") for p in report["problems"])


def test_the_newest_batch_failing_is_failing_whichever_run_came_last(pipeline_settings):
    broken = build_series(seed=12, patients=5, practices=PRACTICE, deltas=1, extracts=["Invoices"],
                          faults={"wrong_field_count": 1})
    full, delta = broken
    (bad,) = [f for f in delta.files if f.fatal_fault]
    _upload(pipeline_settings, full.files + delta.files)
    newest_day = delta.date_extracted.date()
    older_day = full.date_extracted.date()
    late = run(pipeline_settings, Selection(kind="backfill", date_from=newest_day, date_to=newest_day))
    assert late["status"] == "failed"
    older = run(pipeline_settings, Selection(kind="backfill", date_from=older_day, date_to=older_day))
    assert older["status"] == "succeeded"  # the last run succeeded ...

    report = _report(pipeline_settings, _day_after(delta))
    invoices = report["extracts"]["Invoices"]
    assert invoices["state"] == "failing"  # ... but the newest Invoices delivery is not in core
    assert [f["s3_key"] for f in invoices["failed_files"]] == [bad.name]
    assert invoices["failed_files"][0]["newest_batch"] is True
    assert any("of the newest batch failed" in p and bad.name in p for p in invoices["problems"])
    assert report["status"] == "failing"

    # The provider sends the file again, whole: a new version of the same key repairs the extract.
    good = build_series(seed=12, patients=5, practices=PRACTICE, deltas=1, extracts=["Invoices"])[1]
    (fixed,) = [f for f in good.files if f.name == bad.name]
    _upload(pipeline_settings, [fixed])
    assert run(pipeline_settings)["status"] == "succeeded"
    invoices = _report(pipeline_settings, _day_after(delta))["extracts"]["Invoices"]
    assert invoices["state"] == "ok" and invoices["failed_files"] == [] and invoices["problems"] == []


def test_freshness_follows_the_expected_delivery(pipeline_settings):
    (batch,) = build_series(seed=13, patients=5, practices=PRACTICE, deltas=0, extracts=["Vaccine"])
    _upload(pipeline_settings, batch.files)
    assert run(pipeline_settings)["status"] == "succeeded"
    extracted = nz_local_to_utc(batch.date_extracted)
    fresh = _report(pipeline_settings, extracted + timedelta(days=7, hours=23))["extracts"]["Vaccine"]
    assert fresh["state"] == "ok" and fresh["stale_after_days"] == 8
    stale = _report(pipeline_settings, extracted + timedelta(days=8, hours=1))
    assert stale["extracts"]["Vaccine"]["state"] == "stale" and stale["status"] == "failing"
    assert any(p.startswith("Vaccine: stale") for p in stale["problems"])
    # Never-loaded extracts become problems too once runs have happened for longer than their period.
    assert stale["extracts"]["Patients"]["state"] == "never_loaded"
    with psycopg.connect(pipeline_settings.database_url.get_secret_value()) as conn:
        conn.execute("INSERT INTO etl.config (extract, key, value, source) VALUES "
                     "('Vaccine', 'expected_delivery', '\"monthly\"', 'operator')")
        conn.commit()
    try:
        monthly = _report(pipeline_settings, extracted + timedelta(days=8, hours=1))["extracts"]["Vaccine"]
        assert monthly["state"] == "ok" and monthly["stale_after_days"] == 32
    finally:
        with psycopg.connect(pipeline_settings.database_url.get_secret_value()) as conn:
            conn.execute("DELETE FROM etl.config WHERE extract = 'Vaccine' AND key = 'expected_delivery'")
            conn.commit()


def test_runs_stuck_in_running_are_reported_with_their_age(pipeline_settings):
    now = datetime.now(timezone.utc)
    with psycopg.connect(pipeline_settings.database_url.get_secret_value()) as conn:
        stuck = conn.execute("INSERT INTO etl.load_runs (kind, started_at) VALUES ('nightly', %s) "
                             "RETURNING load_run_id", (now - timedelta(hours=5),)).fetchone()[0]
        busy = conn.execute("INSERT INTO etl.load_runs (kind, started_at) VALUES ('backfill', %s) "
                            "RETURNING load_run_id", (now - timedelta(minutes=20),)).fetchone()[0]
        conn.commit()
    report = _report(pipeline_settings, now)
    running = {r["load_run_id"]: r for r in report["runs"]["running"]}
    assert running[stuck]["stuck"] is True and running[stuck]["age_hours"] == pytest.approx(5, abs=0.01)
    assert running[busy]["stuck"] is False
    assert any(p.startswith(f"run {stuck} (nightly) has been running for 5.0 h") for p in report["problems"])
    assert not any(p.startswith(f"run {busy} ") for p in report["problems"])
    assert report["status"] == "failing"
    assert query(pipeline_settings, "SELECT count(*) FROM etl.load_runs")[0][0] == 2  # the report wrote nothing


def test_no_run_yet_is_no_data(pipeline_settings):
    report = _report(pipeline_settings, datetime.now(timezone.utc))
    assert report["status"] == "no_data" and report["extracts"] == {}
