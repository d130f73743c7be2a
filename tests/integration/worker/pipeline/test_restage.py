"""Restage: after a contract fix, rows once rejected reach stg and core; nothing is duplicated, the counts
add up, the change is audited and the replay is a run of its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from contracts import registry
from contracts.registry import get as get_spec
from tests.integration.worker.pipeline.helpers import put_file, query, run
from worker.io.db import connect
from worker.io.indici_reader import encode_rows
from worker.io.s3 import make_client
from worker.pipeline import merge, operator, stage
from worker.pipeline.restage import RestageError, restage
from worker.synth import build_series

# These tests set operator values: they start from migrate's etl.config and leave it so.
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("default_config")]

PRACTICE = [(685146, 535)]


def _cli(settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": settings.database_url.get_secret_value(),
           "DB_ROLE_PREFIX": settings.db_role_prefix,
           "NHI_HMAC_KEY": settings.nhi_hmac_key.get_secret_value()}
    return subprocess.run([sys.executable, "-m", "worker.cli", "--log-level", "ERROR", *args], check=False, env=env,
                          capture_output=True, text=True, timeout=300)


def _counts(settings, extract: str) -> dict[str, int]:
    spec = get_spec(extract)
    stg, rejects, core, core_keys = query(settings, (
        f"SELECT (SELECT count(*) FROM stg.{spec.table}), (SELECT count(*) FROM etl.rejects_{spec.table}), "
        f"(SELECT count(*) FROM core.{spec.core.table}), "
        f"(SELECT count(DISTINCT ({', '.join(spec.natural_key)})) FROM core.{spec.core.table})"))[0]
    return {"stg": stg, "rejects": rejects, "core": core, "core_keys": core_keys}


def test_restage_after_a_relaxed_threshold_brings_a_failed_file_into_core(pipeline_settings):
    """A Patients file fails its reject-rate threshold; the operator relaxes it (config set) and restages:
    the file's rows reach core once, its rejects stay rejected, and run, files and audit say so."""
    settings = pipeline_settings
    (batch,) = build_series(seed=5, patients=20, practices=PRACTICE, deltas=0, extracts=["Patients"])
    patients = batch.file("Patients")
    spec = get_spec("Patients")
    rows = [list(r) for r in patients.rows]
    for row in rows[:3]:
        row[spec.column_names.index("patient_id")] = ""  # rejected: the id is required
    put_file(make_client(settings), settings.s3_bucket, patients.name, encode_rows(rows))
    assert _cli(settings, "config", "set", "Patients", "min_rows_for_rates", "1").returncode == 0
    summary = run(settings)
    assert summary["status"] == "failed" and summary["rows_rejected"] == 3, summary
    first_run = summary["load_run_id"]
    assert _counts(settings, "Patients")["core"] == 0

    assert _cli(settings, "config", "set", "Patients", "max_reject_rate", "0.2", "--by", "ana").returncode == 0
    done = _cli(settings, "restage", "--extract", "patients", "--run", str(first_run), "--by", "ana")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "succeeded" and result["load_run_id"] != first_run
    (restaged,) = result["restaged"]
    assert restaged["status"] == "failed" and restaged["now"] == {"status": "merged", "rows_staged": len(rows) - 3,
                                                                  "rows_rejected": 3}
    counts = _counts(settings, "Patients")
    assert counts == {"stg": len(rows) - 3, "rejects": 3, "core": len(rows) - 3, "core_keys": len(rows) - 3}
    assert query(settings, "SELECT kind, status FROM etl.load_runs WHERE load_run_id = %s",
                 (result["load_run_id"],)) == [("restage", "succeeded")]
    assert result["anomalies"] == [] and query(  # replayed deliveries are not a load to judge
        settings, "SELECT count(*) FROM etl.dq_results WHERE load_run_id = %s AND check_name LIKE 'anomaly_%%'",
        (result["load_run_id"],)) == [(0,)]
    (arguments, previous), = query(settings, "SELECT arguments, previous FROM etl.operator_actions "
                                   "WHERE command = 'restage' AND actor = 'ana'")
    assert arguments["extract"] == "Patients" and arguments["run"] == first_run
    assert arguments["load_run_id"] == result["load_run_id"] and len(arguments["files"]) == 1
    assert previous[0]["status"] == "failed" and previous[0]["load_run_id"] == first_run

    again = json.loads(_cli(settings, "restage", "--extract", "Patients").stdout)  # merged -> restaged again
    assert again["status"] == "succeeded"
    assert _counts(settings, "Patients") == counts  # nothing duplicated
    (read, staged, rejected), = query(settings, "SELECT rows_read, rows_staged, rows_rejected FROM etl.load_run_files")
    assert read == staged + rejected == len(rows)

    none = _cli(settings, "restage", "--extract", "Patients", "--run", "999")
    assert none.returncode == 2 and "no Patients file of run 999 has rows in raw" in none.stderr
    bad = _cli(settings, "restage", "--extract", "Patients_")
    assert bad.returncode == 2 and "Patients" in bad.stderr


@pytest.fixture()
def strict_status_contract(tmp_path: Path, monkeypatch):
    """The contracts with Appointments.appointment_status required and its unmapped values rejected (no
    shipped contract rejects unmapped values yet), as if an engineer had edited the YAML."""
    specs = tmp_path / "extracts"
    shutil.copytree(registry.SPEC_DIR, specs)
    path = specs / "appointments.yaml"
    text = path.read_text(encoding="utf-8")
    old = "column: appointment_status, type: text, domain: appointment_status}"
    assert old in text
    path.write_text(text.replace(old, old[:-1] + ", required: true, unmapped: reject}"), encoding="utf-8")

    def clear() -> None:
        registry.load_all.cache_clear()
        for cached in (stage._statements, merge._dim_statements, merge._fact_statements):
            cached.cache_clear()

    monkeypatch.setattr(registry.load_all.__wrapped__, "__defaults__", (specs,))
    clear()
    yield
    monkeypatch.undo()
    clear()


def test_restage_after_a_domain_value_is_mapped_brings_the_rejected_row_into_core(pipeline_settings,
                                                                                   strict_status_contract):
    settings = pipeline_settings
    spec = get_spec("Appointments")
    assert spec.column("appointment_status").unmapped == "reject"
    (batch,) = build_series(seed=9, patients=8, practices=PRACTICE, deltas=0, extracts=["Patients", "Appointments"])
    appointments = batch.file("Appointments")
    rows = [list(r) for r in appointments.rows]
    status = spec.column_names.index("appointment_status")
    key = spec.column_names.index("appointment_id")
    rows[0][status] = "Legacy-Held"
    planted_id = int(rows[0][key])
    with connect(settings) as conn:  # every other status the file holds is a known, mapped code
        for value in sorted({r[status] for r in rows[1:] if r[status]}):
            operator.map_domain_value(conn, "appointment_status", value, value, "test")
        operator.set_config(conn, "Appointments", "max_reject_rate", 1.0, "test")
        conn.commit()
    s3 = make_client(settings)
    put_file(s3, settings.s3_bucket, batch.file("Patients").name, batch.file("Patients").data)
    put_file(s3, settings.s3_bucket, appointments.name, encode_rows(rows))
    summary = run(settings)
    assert summary["status"] == "succeeded", summary
    before = _counts(settings, "Appointments")
    assert before["rejects"] >= 1
    (rule,), = query(settings, "SELECT e ->> 'rule' FROM etl.rejects_appointments r, "
                     "jsonb_array_elements(r.field_errors) e WHERE e ->> 'column' = 'appointment_status'")
    assert rule == "unmapped_domain_value"
    assert not query(settings, "SELECT 1 FROM core.fact_appointment WHERE appointment_id = %s", (planted_id,))

    with connect(settings) as conn:
        operator.map_domain_value(conn, "appointment_status", "Legacy-Held", "Held (legacy code)", "ana")
        conn.commit()
        result = restage(conn, settings, "Appointments", actor="ana")
    assert result["status"] == "succeeded", result
    after = _counts(settings, "Appointments")
    assert after["rejects"] == before["rejects"] - 1 and after["stg"] == before["stg"] + 1
    assert after["core"] == after["core_keys"] == before["core"] + 1  # the row, once; nothing else doubled
    assert query(settings, "SELECT appointment_status FROM core.fact_appointment WHERE appointment_id = %s",
                 (planted_id,)) == [("Legacy-Held",)]
    assert query(settings, "SELECT count(*) FROM stg.appointments WHERE appointment_id = %s", (planted_id,)) == [(1,)]
    (read, staged, rejected, superseded), = query(
        settings, "SELECT rows_read, rows_staged, rows_rejected, rows_superseded FROM etl.load_run_files "
        "WHERE extract = 'Appointments'")
    assert read == staged + rejected + superseded == len(rows)
    # Patients was not restaged: its file is still the first run's.
    assert query(settings, "SELECT load_run_id FROM etl.load_run_files WHERE extract = 'Patients'") == [
        (summary["load_run_id"],)]

    with connect(settings) as conn, pytest.raises(RestageError, match="no Vaccine file"):
        restage(conn, settings, "Vaccine")
