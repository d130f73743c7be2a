"""Shared test configuration: paths to the fixture files and the provider documentation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"
SAMPLE_PATIENTS = FIXTURES / "indici" / "685146_535_Patients_202508180544_202508190544_2508190850.csv"


def docs_dir() -> Path:
    """The provider documentation (../shared/indici beside the checkout, or INDICI_DOCS_DIR)."""
    return Path(os.environ.get("INDICI_DOCS_DIR", REPO_ROOT.parent / "shared" / "indici"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES
