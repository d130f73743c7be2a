"""worker/pipeline/lifecycle.py: transitions, leases, adoption, the reconciler, lock timeouts, and every
failure path closing its run."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psycopg
import pytest

from tests.conftest import REPO_ROOT
from tests.integration.worker.pipeline.helpers import put_file, query
from worker.io.db import connect
from worker.io.s3 import make_client
from worker.pipeline import ledger, lifecycle
from worker.pipeline.lifecycle import FileStatus, InvalidTransition, LockSpace, RunStatus, Selection
from worker.pipeline.run import run_inline
from worker.synth import build_series

pytestmark = pytest.mark.integration

PRACTICE = [(685146, 535)]


def _upload(settings, extracts=("Patients", "Vaccine"), seed=5) -> int:
    (batch,) = build_series(seed=seed, patients=6, practices=PRACTICE, deltas=0, extracts=list(extracts))
    s3 = make_client(settings)
    for f in batch.files:
        put_file(s3, settings.s3_bucket, f.name, f.data)
    return len(batch.files)


def _expire(settings, run_id: int) -> None:
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        conn.execute("UPDATE etl.load_runs SET lease_expires_at = now() - interval '1 second' "
                     "WHERE load_run_id = %s", (run_id,))
        conn.execute("UPDATE etl.load_run_files SET lease_expires_at = NULL WHERE load_run_id = %s", (run_id,))


def test_enum_values_are_the_stored_strings_and_transitions_are_checked(pipeline_settings):
    from contracts.schema import FILE_STATUSES, RUN_STATUSES

    assert {s.value for s in FileStatus} == set(FILE_STATUSES)
    assert {s.value for s in RunStatus} == set(RUN_STATUSES)
    with pytest.raises(InvalidTransition):
        lifecycle.check_run_transition(RunStatus.SUCCEEDED, RunStatus.FAILED)
    _upload(pipeline_settings, extracts=("Vaccine",))
    with connect(pipeline_settings) as conn:
        run_id = lifecycle.open_run(conn, Selection(), pipeline_settings).run_id
        plan = lifecycle.plan_run(conn, make_client(pipeline_settings), pipeline_settings, Selection(), run_id)
        (file_id,) = plan.file_ids
        with pytest.raises(InvalidTransition, match="pending to merged|were not staged"):
            ledger.mark_merged(conn, [file_id])  # a pending file cannot become merged
        conn.rollback()
        with pytest.raises(InvalidTransition, match="from pending to staged"):
            ledger.mark_staged(conn, file_id, staged=1, rejected=0, superseded=0, error=None)
        conn.rollback()
        assert ledger.get(conn, file_id).status == "pending"


def test_inline_discovery_failing_closes_the_run(pipeline_settings):
    """S3 unreachable after the pre-flight checks: the run is closed failed, with the reason."""
    broken = pipeline_settings.model_copy(update={"s3_endpoint_url": "http://127.0.0.1:1"})
    import botocore.exceptions

    with connect(pipeline_settings) as conn, pytest.raises(botocore.exceptions.EndpointConnectionError):
        run_inline(conn, make_client(broken), pipeline_settings, Selection())
    ((status, error, finished),) = query(pipeline_settings, "SELECT status, error, finished_at FROM etl.load_runs")
    assert status == "failed" and error.startswith("planning: ") and finished is not None


def test_a_later_run_adopts_the_files_of_a_run_that_is_no_longer_alive(pipeline_settings):
    files = _upload(pipeline_settings)
    s3 = make_client(pipeline_settings)
    with connect(pipeline_settings) as conn:
        dead = lifecycle.open_run(conn, Selection(), pipeline_settings).run_id  # a Celery run whose worker died
        plan = lifecycle.plan_run(conn, s3, pipeline_settings, Selection(), dead)
        lifecycle.process_file(conn, s3, plan.file_ids[0], pipeline_settings)  # one file staged, in the dead run
    # While the dead run is alive, a second run of the same selection joins it instead of starting.
    with connect(pipeline_settings) as conn:
        assert lifecycle.open_run(conn, Selection(), pipeline_settings) == lifecycle.OpenedRun(dead, joined=True)
    _expire(pipeline_settings, dead)
    with connect(pipeline_settings) as conn:
        summary = run_inline(conn, s3, pipeline_settings, Selection())
    assert summary["status"] == "succeeded" and summary["load_run_id"] != dead
    # The pending file is adopted; the staged one stays the (now closed) dead run's and this run's merge
    # takes it, as it takes every staged file of a closed run: nothing is left staged or unmerged.
    assert summary["files"] == files - 1 and summary["adopted"] == files - 1
    statuses = query(pipeline_settings, "SELECT status, load_run_id FROM etl.load_run_files ORDER BY file_id")
    assert statuses == [("merged", dead), ("merged", summary["load_run_id"])]
    ((status, error),) = query(pipeline_settings, "SELECT status, error FROM etl.load_runs WHERE load_run_id = %s",
                               (dead,))
    assert status == "failed" and "lease expired" in error


def test_the_reconciler_repairs_runs_whose_driver_is_gone(pipeline_settings):
    _upload(pipeline_settings)
    s3 = make_client(pipeline_settings)
    with connect(pipeline_settings) as conn:
        # A Celery run whose chord was lost after every file finished: merge and close.
        lost_chord = lifecycle.open_run(conn, Selection(), pipeline_settings).run_id
        plan = lifecycle.plan_run(conn, s3, pipeline_settings, Selection(), lost_chord)
        for file_id in plan.file_ids:
            lifecycle.process_file(conn, s3, file_id, pipeline_settings)
        # A Celery run never planned (its start message was lost), and an inline run whose process died.
        unplanned = lifecycle.open_run(conn, Selection(kind="backfill", date_from=None, date_to=None,
                                                       extracts=("Vaccine",)), pipeline_settings).run_id
        inline = lifecycle.open_run(conn, Selection(extracts=("Patients",)), pipeline_settings,
                                    driver="inline").run_id
        live = lifecycle.open_run(conn, Selection(extracts=("Vaccine",)), pipeline_settings).run_id
        for run_id in (lost_chord, unplanned, inline):
            _expire(pipeline_settings, run_id)
        repairs = {r.run_id: r for r in lifecycle.reconcile(conn, pipeline_settings)}
        assert repairs[lost_chord].action == "close" and repairs[unplanned].action == "plan"
        assert inline not in repairs and live not in repairs  # the inline run is failed; the live one left
        assert lifecycle.reconcile(conn, pipeline_settings) == []  # each repair renewed its run's lease
        for _ in range(lifecycle.RECONCILE_ROUNDS):
            _expire(pipeline_settings, unplanned)
            lifecycle.reconcile(conn, pipeline_settings)
    runs = dict(query(pipeline_settings, "SELECT load_run_id, status FROM etl.load_runs"))
    assert runs[inline] == "failed" and runs[unplanned] == "failed" and runs[live] == "running"
    errors = dict(query(pipeline_settings, "SELECT load_run_id, error FROM etl.load_runs WHERE error IS NOT NULL"))
    assert "inline process" in errors[inline] and "reconciler" in errors[unplanned]


def test_a_lock_wait_times_out_naming_the_holder(pipeline_settings):
    url = pipeline_settings.database_url.get_secret_value()
    with psycopg.connect(url, application_name="indici-ingest run 7 land file 42") as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s, %s)", (int(LockSpace.LAND), 42))
        with psycopg.connect(url) as waiter:
            started = time.monotonic()
            with pytest.raises(ledger.LockTimeout, match="run 7 land file 42"):
                ledger.lock(waiter, LockSpace.LAND, 42, timeout=0.5)
            assert time.monotonic() - started < 10


def test_every_version_considered_is_on_record_and_rejects_add_up(pipeline_settings):
    (batch,) = build_series(seed=6, patients=6, practices=PRACTICE, deltas=0, extracts=["Vaccine"])
    (f,) = batch.files
    s3 = make_client(pipeline_settings)
    put_file(s3, pipeline_settings.s3_bucket, f.name, f.data[:-40] + f.data[-40:])  # an older version
    put_file(s3, pipeline_settings.s3_bucket, f.name, f.data)  # the newest version of the key
    with connect(pipeline_settings) as conn:
        summary = run_inline(conn, s3, pipeline_settings, Selection())
    assert summary["superseded_versions"] == 1 and summary["files"] == 1
    rows = query(pipeline_settings, "SELECT status, rows_read, rows_staged, rows_rejected FROM etl.load_run_files "
                                    "ORDER BY file_id")
    assert sorted(r[0] for r in rows) == ["merged", "superseded"]
    for status, read, staged, rejected in rows:
        if status == "merged":
            assert read == staged + rejected
    assert summary["rows_read"] == summary["rows_staged"] + summary["rows_rejected"]


def test_wait_says_when_no_worker_consumes_and_status_shows_the_run(pipeline_settings, redis_url):
    _upload(pipeline_settings, extracts=("Vaccine",))
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": pipeline_settings.database_url.get_secret_value(),
           "DB_ROLE_PREFIX": pipeline_settings.db_role_prefix, "S3_BUCKET": pipeline_settings.s3_bucket,
           "S3_ENDPOINT_URL": pipeline_settings.s3_endpoint_url, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "NHI_HMAC_KEY": "test-nhi-hmac-key-of-at-least-32-bytes",
           "CELERY_BROKER_URL": redis_url, "CELERY_RESULT_BACKEND": redis_url}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "worker.cli", "--log-level", "ERROR", *args], env=env,
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)

    started = time.monotonic()
    done = cli("run", "--wait", "--timeout", "600")
    assert done.returncode == 1 and time.monotonic() - started < 30
    assert "no worker consumes the queue(s) indici.files, indici.merges" in done.stderr
    ((run_id,),) = query(pipeline_settings, "SELECT load_run_id FROM etl.load_runs")
    shown = cli("status", str(run_id))
    assert shown.returncode == 0 and json.loads(shown.stdout)["status"] == "running"
    followed = cli("status", str(run_id), "--follow", "--timeout", "1")
    assert followed.returncode == 1 and "still running after 1s" in followed.stderr
    assert cli("status", "999999").returncode == 2


def test_a_backfill_adopts_files_staged_in_a_stuck_run_before_merging(pipeline_settings):
    """A run stuck `running` (its worker died) with a dimension staged: another selection's run takes the
    staged file into its merge instead of merging facts against inferred members."""
    (batch,) = build_series(seed=7, patients=6, practices=PRACTICE, deltas=0, extracts=["Patients", "Appointments"])
    s3 = make_client(pipeline_settings)
    for f in batch.files:
        put_file(s3, pipeline_settings.s3_bucket, f.name, f.data)
    patients = next(f for f in batch.files if "Patients" in f.name)
    with connect(pipeline_settings) as conn:
        stuck = lifecycle.open_run(conn, Selection(extracts=("Patients",)), pipeline_settings).run_id
        plan = lifecycle.plan_run(conn, s3, pipeline_settings, Selection(extracts=("Patients",)), stuck)
        lifecycle.process_file(conn, s3, plan.file_ids[0], pipeline_settings)
    _expire(pipeline_settings, stuck)
    day = batch.date_extracted.date()
    with connect(pipeline_settings) as conn:
        summary = run_inline(conn, s3, pipeline_settings, Selection(kind="backfill", date_from=day, date_to=day))
    assert summary["status"] == "succeeded" and summary["adopted"] == 1
    inferred = summary["merge"]["extracts"]["Appointments"]["inferred"]
    assert "Patients" not in inferred, inferred  # the patients were merged first, not inferred
    rows = query(pipeline_settings, "SELECT s3_key, status, load_run_id FROM etl.load_run_files")
    assert {(k, s) for k, s, _ in rows} == {(f.name, "merged") for f in batch.files}
    assert all(run == summary["load_run_id"] for _, _, run in rows), (patients.name, rows)


def test_a_run_with_a_leased_file_is_alive_though_its_own_lease_expired(pipeline_settings):
    """A long step (a big COPY) outlives RUN_LEASE_SECONDS: the file's lease keeps the run alive, so it is
    neither failed by a new run of its selection nor repaired by the reconciler."""
    _upload(pipeline_settings, extracts=("Vaccine",))
    with connect(pipeline_settings) as conn:
        run_id = lifecycle.open_run(conn, Selection(), pipeline_settings).run_id
        plan = lifecycle.plan_run(conn, make_client(pipeline_settings), pipeline_settings, Selection(), run_id)
        _expire(pipeline_settings, run_id)
        with conn.transaction():
            ledger.take_lease(conn, plan.file_ids[0], 600, "a worker in a long COPY")
        assert lifecycle.open_run(conn, Selection(), pipeline_settings) == lifecycle.OpenedRun(run_id, joined=True)
        assert lifecycle.reconcile(conn, pipeline_settings) == []
    assert query(pipeline_settings, "SELECT status FROM etl.load_runs") == [("running",)]


def test_an_inline_run_joins_the_live_run_of_its_selection_and_reports_its_outcome(pipeline_settings):
    import threading

    _upload(pipeline_settings, extracts=("Vaccine",))
    with connect(pipeline_settings) as conn:
        first = lifecycle.open_run(conn, Selection(), pipeline_settings).run_id
    outcome: dict = {}

    def second() -> None:
        with connect(pipeline_settings) as conn:
            outcome.update(run_inline(conn, make_client(pipeline_settings), pipeline_settings, Selection()))

    joiner = threading.Thread(target=second)
    joiner.start()
    time.sleep(2)
    assert joiner.is_alive() and not outcome  # waiting on the first run, not loading beside it
    with connect(pipeline_settings) as conn:
        lifecycle.fail_run(conn, first, "stopped by the test")
    joiner.join(timeout=30)
    assert outcome["load_run_id"] == first and outcome["status"] == "failed"
    assert query(pipeline_settings, "SELECT count(*) FROM etl.load_runs") == [(1,)]
