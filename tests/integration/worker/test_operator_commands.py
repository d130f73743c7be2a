"""Operator commands as a person runs them: rejects, skipped, config show|set, domains list|map; the
changes are validated and audited in etl.operator_actions, and no row text or personal value is shown."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import psycopg
import pytest

from contracts.registry import get as get_spec
from tests.integration.worker.pipeline.helpers import put_file, query, run
from worker.io.indici_reader import encode_rows
from worker.io.s3 import make_client
from worker.synth import build_series

pytestmark = pytest.mark.integration

PRACTICE = [(685146, 535)]


def _cli(settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": settings.database_url.get_secret_value(),
           "DB_ROLE_PREFIX": settings.db_role_prefix}
    return subprocess.run([sys.executable, "-m", "worker.cli", "--log-level", "ERROR", *args], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture()
def loaded(pipeline_settings):
    """A Patients file whose first row has no patient_id (rejected) and a bad date of birth (personal),
    and an Appointments file with a planted unknown domain value; plus a key that does not parse."""
    (batch,) = build_series(seed=41, patients=6, practices=PRACTICE, deltas=0, extracts=["Patients", "Appointments"],
                            faults={"unknown_domain_value": 1})
    spec = get_spec("Patients")
    patients = batch.file("Patients")
    rows = [list(r) for r in patients.rows]
    rows[0][spec.column_names.index("patient_id")] = ""
    rows[0][spec.column_names.index("dob")] = "1980-13-45"
    s3 = make_client(pipeline_settings)
    put_file(s3, pipeline_settings.s3_bucket, patients.name, encode_rows(rows))
    appointments = batch.file("Appointments")
    put_file(s3, pipeline_settings.s3_bucket, appointments.name, appointments.data)
    put_file(s3, pipeline_settings.s3_bucket, "notes/readme.txt", b"not an extract")
    summary = run(pipeline_settings)
    assert summary["status"] == "succeeded", summary
    return pipeline_settings, summary, rows[0], appointments


def test_rejects_show_row_column_rule_and_only_non_personal_values(loaded):
    settings, summary, rejected_row, _ = loaded
    done = _cli(settings, "rejects", "--extract", "Patients", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["rejected_rows"] == {"Patients": 1}
    lines = {line["column"]: line for line in result["lines"]}
    assert lines["patient_id"]["row_number"] == 1 and lines["patient_id"]["severity"] == "reject"
    assert lines["patient_id"]["load_run_id"] == summary["load_run_id"]
    assert lines["dob"]["value"] == "<hidden: birth_date, 10 characters>"  # personal: never shown
    table = _cli(settings, "rejects", "--run", str(summary["load_run_id"]))
    assert table.returncode == 0 and "patient_id" in table.stdout and "row_number" in table.stdout
    output = done.stdout + table.stdout
    name = query(settings, "SELECT s3_key FROM etl.load_run_files WHERE extract = 'Patients'")[0][0]
    for value in rejected_row:  # no field of the row's text reaches the output
        if len(value) >= 4 and value not in name:
            assert not re.search(rf"(?<!\w){re.escape(value)}(?!\w)", output), value
    assert _cli(settings, "rejects", "--run", "999").stdout.strip() == "no rejected rows in run 999"


def test_skipped_lists_keys_that_do_not_parse(loaded):
    settings, summary, _, _ = loaded
    done = _cli(settings, "skipped", "--json")
    assert done.returncode == 0, done.stderr
    (key,) = json.loads(done.stdout)["skipped"]
    assert key["s3_key"] == "notes/readme.txt" and key["last_run_id"] == summary["load_run_id"] and key["reason"]
    assert "notes/readme.txt" in _cli(settings, "skipped").stdout


def test_config_set_validates_and_audits(loaded):
    settings, *_ = loaded
    done = _cli(settings, "config", "set", "Appointments", "max_reject_rate", "0.2", "--by", "ana")
    assert done.returncode == 0, done.stderr
    assert "Appointments max_reject_rate = 0.2 (was " in done.stdout
    assert query(settings, "SELECT value, source FROM etl.config WHERE extract = 'Appointments' "
                 "AND key = 'max_reject_rate'") == [(0.2, "operator")]
    (actor, command, arguments, previous), = query(
        settings, "SELECT actor, command, arguments, previous FROM etl.operator_actions")
    assert (actor, command) == ("ana", "config set")
    assert arguments == {"extract": "Appointments", "key": "max_reject_rate", "value": 0.2}
    assert previous["source"] == "contract"

    assert _cli(settings, "config", "set", "*", "expected_delivery", "daily").returncode == 0
    shown = json.loads(_cli(settings, "config", "show", "--extract", "Vaccine", "--json").stdout)["config"]
    delivery = next(r for r in shown if r["key"] == "expected_delivery")
    assert delivery["value"] == "daily" and delivery["source"] == "* (operator)"

    for args, expected in [(["Appointments", "max_reject_rate", "2"], "outside 0..1"),
                           (["Appointments", "expected_delivery", "hourly"], "is not one of"),
                           (["Appointments", "no_such_key", "1"], "unknown key"),
                           (["Appointments", "stuck_run_hours", "3"], "set it for '*'"),
                           (["Appointments", "max_null_rate", '{"nope": 0.1}'], "not a column")]:
        bad = _cli(settings, "config", "set", *args)
        assert bad.returncode == 2 and expected in bad.stderr, (args, bad.stderr)
    bad = _cli(settings, "config", "set", "Apointments", "max_reject_rate", "0.1")
    assert bad.returncode == 2 and "did you mean Appointments" in bad.stderr
    assert query(settings, "SELECT count(*) FROM etl.operator_actions") == [(2,)]  # refused changes leave no row


def test_domains_list_shows_coverage_and_map_labels_a_value(loaded):
    settings, _, _, appointments = loaded
    (planted,) = [f for f in appointments.faults if f.kind == "unknown_domain_value"]
    domain = get_spec("Appointments").column(planted.column).domain
    coverage = {d["domain"]: d for d in json.loads(_cli(settings, "domains", "list", "--json").stdout)["domains"]}
    assert all(d["values"] == d["mapped"] + d["unmapped"] for d in coverage.values())
    before = coverage[domain]
    assert before["unmapped"] >= 1 and f"Appointments.{planted.column}" in before["columns"]
    values = json.loads(_cli(settings, "domains", "list", domain, "--unmapped", "--json").stdout)[domain]
    assert planted.value in {v["value"] for v in values}

    done = _cli(settings, "domains", "map", domain, planted.value, "Legacy status", "--by", "ana")
    assert done.returncode == 0, done.stderr
    after = {d["domain"]: d for d in json.loads(_cli(settings, "domains", "list", "--json").stdout)["domains"]}[domain]
    assert after["mapped"] == before["mapped"] + 1 and after["unmapped"] == before["unmapped"] - 1
    (arguments, previous), = query(settings, "SELECT arguments, previous FROM etl.operator_actions "
                                   "WHERE command = 'domains map'")
    assert arguments == {"domain": domain, "value": planted.value, "label": "Legacy status"}
    assert previous == {"label": None, "is_mapped": False}
    bad = _cli(settings, "domains", "list", "ethnicity_cod")
    assert bad.returncode == 2 and "did you mean ethnicity_code" in bad.stderr


def test_the_audit_is_append_only_for_the_service_role(loaded):
    settings, *_ = loaded
    assert _cli(settings, "config", "set", "*", "anomaly_rows_factor", "3").returncode == 0
    writer = settings.db_role_prefix + "etl_writer"
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("SET ROLE {}").format(psycopg.sql.Identifier(writer)))
        conn.execute("INSERT INTO etl.operator_actions (actor, command) VALUES ('svc', 'test')")
        for statement in ("UPDATE etl.operator_actions SET actor = 'x'", "DELETE FROM etl.operator_actions"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
