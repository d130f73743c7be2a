"""Fixtures of the pipeline's integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.worker.pipeline.helpers import reset_config


@pytest.fixture()
def default_config(migrated_db) -> Iterator[None]:
    """For tests that set operator values: they start from migrate's etl.config and leave it so."""
    reset_config(migrated_db.url)
    yield
    reset_config(migrated_db.url)
