"""The workers' check before dispatching a planned run: NHI_HMAC_KEY whenever a planned file holds NHIs."""

from __future__ import annotations

import pytest

from tests.conftest import SAMPLE_PATIENTS
from tests.integration.worker.pipeline.helpers import put_file, put_fixture, query, run
from worker.io.db import connect
from worker.io.s3 import make_client
from worker.pipeline.identity import ConfigurationError
from worker.preflight import check_plan_keys
from worker.synth import build_series

pytestmark = pytest.mark.integration


def test_a_planned_nhi_file_needs_the_key(pipeline_settings):
    s3 = make_client(pipeline_settings)
    put_fixture(s3, pipeline_settings.s3_bucket, SAMPLE_PATIENTS)
    (batch,) = build_series(seed=61, patients=5, practices=[(685146, 535)], deltas=0, extracts=["Vaccine"])
    put_file(s3, pipeline_settings.s3_bucket, batch.files[0].name, batch.files[0].data)
    assert run(pipeline_settings)["status"] == "succeeded"
    ids = dict(query(pipeline_settings, "SELECT extract, file_id FROM etl.load_run_files"))
    nokey = pipeline_settings.model_copy(update={"nhi_hmac_key": None})
    with connect(pipeline_settings) as conn:
        with pytest.raises(ConfigurationError, match="NHI_HMAC_KEY is not set: it is required to load Patients"):
            check_plan_keys(conn, nokey, [ids["Patients"], ids["Vaccine"]])
        check_plan_keys(conn, nokey, [ids["Vaccine"]])
        check_plan_keys(conn, nokey, [])
        check_plan_keys(conn, pipeline_settings, [ids["Patients"]])
