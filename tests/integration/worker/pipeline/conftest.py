from __future__ import annotations

import pytest

from tests.integration.worker.pipeline.helpers import reset_data


@pytest.fixture()
def pipeline_settings(migrated_db, s3_server, s3_bucket):
    """Settings pointing at the session database, the moto server and a new versioned bucket, with
    every data table emptied first (the database is shared by the session's tests)."""
    reset_data(migrated_db.url)
    return migrated_db.settings(
        S3_BUCKET=s3_bucket,
        S3_ENDPOINT_URL=s3_server.endpoint_url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        NHI_HMAC_KEY="test-key",
    )
