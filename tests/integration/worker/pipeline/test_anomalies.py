"""Anomalies against the baseline of recent loads: a planted drop in row count is found, written to
etl.dq_results and the run summary, shown by health, and cleared by the next normal load."""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg
import pytest

from contracts.registry import get as get_spec
from tests.integration.worker.pipeline.helpers import put_file, query, run
from worker.io.db import connect
from worker.io.s3 import make_client
from worker.pipeline import anomalies
from worker.pipeline.health import health_report
from worker.pipeline.nztime import nz_local_to_utc
from worker.synth import build_series

pytestmark = pytest.mark.integration

PRACTICE = [(685146, 535)]
EXTRACTS = ["Appointments", "Patients"]
FIRST = datetime(2025, 6, 1, 8, 50)


def _week(settings, week: int, patients: int):
    """One weekly batch of the same population (same rows, new DateExtracted), nightly-loaded."""
    (batch,) = build_series(seed=21, patients=patients, practices=PRACTICE, deltas=0, extracts=EXTRACTS,
                            start=FIRST + timedelta(weeks=week))
    s3 = make_client(settings)
    for f in batch.files:
        put_file(s3, settings.s3_bucket, f.name, f.data)
    summary = run(settings)
    assert summary["status"] == "succeeded", summary
    return batch, summary


def test_a_drop_in_rows_is_an_anomaly_until_a_normal_load_follows(pipeline_settings):
    for week in range(3):  # three normal loads: the minimum baseline
        _, summary = _week(pipeline_settings, week, patients=20)
        assert summary["anomalies"] == []
    checks = query(pipeline_settings, "SELECT detail ->> 'not_applied' FROM etl.dq_results "
                   "WHERE check_name = 'anomaly_rows' AND extract = 'Appointments' ORDER BY load_run_id")
    assert [c[0] for c in checks] == ["0 earlier loads, 3 needed", "1 earlier loads, 3 needed",
                                      "2 earlier loads, 3 needed"]
    normal_rows = query(pipeline_settings, "SELECT rows_read FROM etl.load_run_files "
                        "WHERE extract = 'Appointments' ORDER BY file_id DESC LIMIT 1")[0][0]

    batch, summary = _week(pipeline_settings, 3, patients=3)  # the provider sends a fraction of the rows
    found = {(a["extract"], a["metric"]): a for a in summary["anomalies"]}
    drop = found[("Appointments", "rows")]
    small_rows = query(pipeline_settings, "SELECT rows_read FROM etl.load_run_files "
                       "WHERE extract = 'Appointments' ORDER BY file_id DESC LIMIT 1")[0][0]
    assert small_rows < normal_rows / 2
    assert drop["observed"] == small_rows and drop["baseline_median"] == normal_rows
    assert drop["direction"] == "below" and drop["bound"] == normal_rows / 2 and drop["baseline_loads"] == 3
    assert ("Patients", "rows") in found
    stored = query(pipeline_settings, "SELECT observed, threshold, passed, detail FROM etl.dq_results "
                   "WHERE load_run_id = %s AND extract = 'Appointments' AND check_name = 'anomaly_rows'",
                   (summary["load_run_id"],))
    assert len(stored) == 1 and stored[0][2] is False and float(stored[0][0]) == small_rows
    assert stored[0][3]["message"].startswith(f"Appointments: rows {small_rows} is below")
    assert query(pipeline_settings, "SELECT summary -> 'anomalies' FROM etl.load_runs WHERE load_run_id = %s",
                 (summary["load_run_id"],))[0][0] == summary["anomalies"]

    with connect(pipeline_settings) as conn:
        report = health_report(conn, nz_local_to_utc(batch.date_extracted) + timedelta(days=1))
        # Evaluating again gives the same answer and does not add rows.
        again = anomalies.evaluate_run(conn, summary["load_run_id"])
        conn.commit()
    assert sorted((a.extract, a.metric) for a in again) == sorted(found)
    assert query(pipeline_settings, "SELECT count(*) FROM etl.dq_results WHERE load_run_id = %s "
                 "AND check_name LIKE 'anomaly_%%'", (summary["load_run_id"],))[0][0] == 8
    appointments = report["extracts"]["Appointments"]
    assert appointments["state"] == "warning" and appointments["anomalies"][0]["metric"] == "rows"
    assert any(w.startswith("Appointments: anomaly: rows") for w in report["warnings"])

    batch, summary = _week(pipeline_settings, 4, patients=20)  # a normal load clears it
    assert summary["anomalies"] == []
    with connect(pipeline_settings) as conn:
        report = health_report(conn, nz_local_to_utc(batch.date_extracted) + timedelta(days=1))
    assert report["extracts"]["Appointments"]["anomalies"] == []


def test_tolerances_come_from_etl_config(pipeline_settings):
    url = pipeline_settings.database_url.get_secret_value()
    for week in range(3):
        _week(pipeline_settings, week, patients=20)
    with psycopg.connect(url) as conn:  # a factor of 10: a drop to 3/20 of the rows is within it
        conn.execute("INSERT INTO etl.config (extract, key, value, source) VALUES "
                     "('Appointments', 'anomaly_rows_factor', '10', 'operator')")
        conn.commit()
    try:
        _, summary = _week(pipeline_settings, 3, patients=3)
    finally:
        with psycopg.connect(url) as conn:
            conn.execute("DELETE FROM etl.config WHERE extract = 'Appointments' AND key = 'anomaly_rows_factor'")
            conn.commit()
    assert ("Appointments", "rows") not in {(a["extract"], a["metric"]) for a in summary["anomalies"]}
    assert ("Patients", "rows") in {(a["extract"], a["metric"]) for a in summary["anomalies"]}


def _raw_unmapped_rows(settings, file_id: int) -> int:
    """Rows of the file in raw with a non-empty domain value that its domain table does not map (written
    here from the contract, independently of the pipeline's own statement)."""
    spec = get_spec("Appointments")
    conditions = " OR ".join(
        f"(r.{c.column} <> '' AND NOT EXISTS (SELECT 1 FROM etl.domain_{c.domain} d "
        f"WHERE d.value = r.{c.column} AND d.is_mapped))" for c in spec.columns if c.domain)
    return query(settings, f"SELECT count(*) FROM raw.appointments_raw r WHERE r.load_file_id = %s AND ({conditions})",
                 (file_id,))[0][0]


def test_the_unmapped_domain_rate_is_counted_while_staging_as_mapped_then(pipeline_settings):
    _week(pipeline_settings, 0, patients=20)
    # Map every value seen so far but the statuses other than the commonest: some rows are then unmapped
    # by their status alone, the others not at all.
    (common,) = query(pipeline_settings, "SELECT appointment_status FROM raw.appointments_raw "
                      "WHERE appointment_status <> '' GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1")[0]
    with psycopg.connect(pipeline_settings.database_url.get_secret_value()) as conn:
        for domain in {c.domain for c in get_spec("Appointments").columns if c.domain} - {"appointment_status"}:
            conn.execute(f"UPDATE etl.domain_{domain} SET is_mapped = true, label = value")
        conn.execute("UPDATE etl.domain_appointment_status SET is_mapped = true, label = value WHERE value = %s",
                     (common,))
    _, summary = _week(pipeline_settings, 1, patients=20)
    (file_id, rows_read), = query(pipeline_settings, "SELECT file_id, rows_read FROM etl.load_run_files "
                                  "WHERE load_run_id = %s AND extract = 'Appointments'", (summary["load_run_id"],))
    expected = _raw_unmapped_rows(pipeline_settings, file_id)
    assert 0 < expected < rows_read  # the mapping took some rows out, not all
    stored = query(pipeline_settings, "SELECT observed FROM etl.dq_results WHERE file_id = %s "
                   "AND check_name = 'unmapped_domain_rows'", (file_id,))
    assert [float(s[0]) for s in stored] == [expected]
    rate = "SELECT observed FROM etl.dq_results WHERE load_run_id = %s AND extract = 'Appointments' " \
           "AND check_name = 'anomaly_unmapped_domain_rate'"
    assert float(query(pipeline_settings, rate, (summary["load_run_id"],))[0][0]) == pytest.approx(expected / rows_read)

    # Mapped after staging: the run's rate stays the one its file was staged with (no second scan of raw).
    with psycopg.connect(pipeline_settings.database_url.get_secret_value()) as conn:
        conn.execute("UPDATE etl.domain_appointment_status SET is_mapped = true, label = value")
    with connect(pipeline_settings) as conn:
        anomalies.evaluate_run(conn, summary["load_run_id"])
        conn.commit()
    assert _raw_unmapped_rows(pipeline_settings, file_id) < expected
    assert float(query(pipeline_settings, rate, (summary["load_run_id"],))[0][0]) == pytest.approx(expected / rows_read)
