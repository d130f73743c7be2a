"""Nightly selection against a real bucket: the newest batch first, then every batch not loaded yet."""

from __future__ import annotations

import pytest

from tests.integration.worker.pipeline.helpers import put_file, query, run
from worker.io.s3 import make_client
from worker.synth import build_series

pytestmark = pytest.mark.integration


def test_nightly_takes_every_batch_on_a_first_night_then_catches_up_every_missed_one(pipeline_settings):
    batches = build_series(seed=9, patients=5, practices=[(685146, 535)], deltas=3, extracts=["Vaccine"])
    s3 = make_client(pipeline_settings)

    def deliver(*indexes: int) -> None:
        for i in indexes:
            (f,) = batches[i].files
            put_file(s3, pipeline_settings.s3_bucket, f.name, f.data)

    def loaded() -> list:
        rows = query(pipeline_settings, "SELECT s3_key FROM etl.load_run_files ORDER BY date_extracted")
        return [r[0] for r in rows]

    deliver(0, 1)
    first = run(pipeline_settings)  # first run: every batch available (a delta needs its full batch)
    assert loaded() == [batches[0].files[0].name, batches[1].files[0].name]
    assert first["first_load"] and "every available batch" in first["note"]
    deliver(2, 3)  # two deliveries before the next night: neither may be lost
    summary = run(pipeline_settings)
    assert summary["status"] == "succeeded" and summary["files"] == 2
    assert loaded() == [batches[i].files[0].name for i in (0, 1, 2, 3)]
    assert run(pipeline_settings)["files"] == 0  # nothing new: nothing loaded
