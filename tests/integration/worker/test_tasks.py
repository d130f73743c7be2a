"""The tasks' failure rules, run in-process (Celery's eager mode: retries happen at once, same code path).

A worker-level test of the same rules with real processes is test_celery.py; here the failures are
injected, which a real worker cannot be asked to do.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.conftest import SAMPLE_PATIENTS
from tests.integration.worker.pipeline.helpers import put_fixture, query
from worker.io.db import connect
from worker.io.s3 import make_client
from worker.pipeline import ledger, lifecycle
from worker.pipeline.run import Selection

pytestmark = pytest.mark.integration


@pytest.fixture()
def planned(pipeline_settings):
    """One registered, pending file; (settings, run_id, file_id)."""
    from worker import orchestration

    put_fixture(make_client(pipeline_settings), pipeline_settings.s3_bucket, SAMPLE_PATIENTS)
    with connect(pipeline_settings) as conn:
        run_id = orchestration.create_run(conn, Selection(), pipeline_settings)
        plan = lifecycle.plan_run(conn, make_client(pipeline_settings), pipeline_settings, Selection(), run_id)
    (file_id,) = plan.file_ids
    return pipeline_settings, run_id, file_id


def test_an_infrastructure_error_is_retried_then_recorded_and_the_task_returns(planned, monkeypatch):
    from worker import tasks

    settings, run_id, file_id = planned
    monkeypatch.setattr(tasks, "_settings", lambda: settings)
    calls = []

    def unreachable(*args, **kwargs):
        calls.append(1)
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(lifecycle, "land_version", unreachable)
    result = tasks.land_file.apply(args=(run_id, file_id))
    assert result.get() == {"file_id": file_id, "status": "failed"}  # returned: the chord goes on
    assert len(calls) == tasks.land_file.max_retries + 1  # bounded retries, then the failure is recorded
    with connect(settings) as conn:
        record = ledger.get(conn, file_id)
    assert record.status == "failed" and record.retryable and "OperationalError" in record.error


def test_an_unexpected_error_is_recorded_at_once(planned, monkeypatch):
    from worker import tasks

    settings, run_id, file_id = planned
    monkeypatch.setattr(tasks, "_settings", lambda: settings)
    calls = []

    def bug(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("COPY stored 1 rows but the file has 2")

    monkeypatch.setattr(lifecycle, "stage_version", bug)
    # The land task's staging in the same pass fails too: the file is committed landed, for the stage task.
    assert tasks.land_file.apply(args=(run_id, file_id)).get()["status"] == "landed"
    calls.clear()
    assert tasks.stage_file.apply(args=(run_id, file_id)).get() == {"file_id": file_id, "status": "failed"}
    assert len(calls) == 1  # not an infrastructure error: no retry
    with connect(settings) as conn:
        record = ledger.get(conn, file_id)
    assert record.status == "failed" and record.error_detail["stage"] == "stage"


def test_a_failed_merge_fails_the_run_after_the_body_finalises_it(planned, monkeypatch):
    from worker import tasks

    settings, run_id, file_id = planned
    monkeypatch.setattr(tasks, "_settings", lambda: settings)
    tasks.land_file.apply(args=(run_id, file_id)).get()
    tasks.stage_file.apply(args=(run_id, file_id)).get()

    def broken_merge(*args, **kwargs):
        raise ValueError("a merge statement failed")

    monkeypatch.setattr(lifecycle.merge_step, "merge_run", broken_merge)
    assert tasks.merge_run.apply(args=(run_id,)).get()["status"] == "failed"
    assert tasks.finalise_run.apply(args=(run_id,)).get()["status"] == "failed"
    status, error, finished = query(settings, "SELECT status, error, finished_at FROM etl.load_runs "
                                              "WHERE load_run_id = %s", (run_id,))[0]
    assert status == "failed" and error.startswith("merge: ValueError") and finished is not None


def test_the_errback_closes_a_run_whose_chord_failed(planned, monkeypatch):
    from worker import tasks

    settings, run_id, _ = planned
    monkeypatch.setattr(tasks, "_settings", lambda: settings)
    assert tasks.fail_run.apply(args=(run_id,)).get()["status"] == "failed"
    assert query(settings, "SELECT status FROM etl.load_runs WHERE load_run_id = %s", (run_id,))[0][0] == "failed"


def test_enqueue_with_the_broker_down_leaves_no_running_orphan(pipeline_settings, monkeypatch):
    from kombu.exceptions import OperationalError

    from worker import orchestration

    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to redis:6379. Connection refused.")

    monkeypatch.setattr(orchestration, "send", broker_down)
    with pytest.raises(orchestration.EnqueueError):
        orchestration.enqueue_run(pipeline_settings, Selection())
    ((status, error, finished),) = query(pipeline_settings, "SELECT status, error, finished_at FROM etl.load_runs")
    assert status == "failed" and "could not enqueue" in error and finished is not None
