"""Shared fixtures for the synth tests: one clean series and one series with every fault kind."""

from __future__ import annotations

import pytest

from contracts.registry import load_all
from worker.synth import FAULT_KINDS, build_series

PRACTICES = [(685146, 535), (685146, 536)]


@pytest.fixture(scope="session")
def specs():
    return load_all()


@pytest.fixture(scope="session")
def clean_series():
    return build_series(seed=11, patients=60, practices=PRACTICES, deltas=2)


@pytest.fixture(scope="session")
def faulty_series():
    # every kind twice, in the last batch (the default target)
    return build_series(seed=5, patients=60, practices=PRACTICES, deltas=2, faults=list(FAULT_KINDS) * 2)
