"""PRODUCT.md guarantee 4: core is a function of the set of batches loaded, not of their order.

A generated series (one full batch, then deltas that update facts and change tracked dimension attributes)
is loaded batch by batch through the inline pipeline + merge, in random orders and with repeats, each time
into a freshly emptied database; every core table must equal, row by row, the core of loading the batches
in their natural order (surrogate and FK key values, load_run_id and merged_at excepted: FKs are compared
by the referenced row's natural key + effective_from, load_file_id by the file's key and version).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.worker.pipeline.helpers import reset_data
from tests.integration.worker.pipeline.test_merge import core_snapshot, load_date, q
from worker.io.s3 import make_client
from worker.synth.batches import build_series
from worker.synth.writer import write_s3

pytestmark = pytest.mark.integration

SERIES = build_series(seed=2024, patients=20, practices=((685146, 535),), deltas=3)
DAYS = [b.date_extracted.date() for b in SERIES]


@st.composite
def load_orders(draw):
    """Every batch at least once, in any order, with up to two repeats anywhere."""
    order = list(draw(st.permutations(range(len(SERIES)))))
    for batch, where in draw(st.lists(st.tuples(st.sampled_from(range(len(SERIES))), st.integers(0, len(SERIES))),
                                      max_size=2)):
        order.insert(where, batch)
    return order


def _load(settings_, order) -> dict:
    reset_data(settings_.database_url.get_secret_value())
    for index in order:
        load_date(settings_, DAYS[index])
    snapshot = core_snapshot(settings_)
    # the calendar too: one continuous range over the dates seen, whatever the order
    snapshot["dim_date"] = q(settings_, "SELECT d::text FROM core.dim_date t, LATERAL (SELECT t.*) d ORDER BY t.date")
    return snapshot


@pytest.fixture()
def loaded_bucket(pipeline_settings):
    write_s3([f for b in SERIES for f in b.files], pipeline_settings.s3_bucket, "", make_client(pipeline_settings))
    reference = _load(pipeline_settings, list(range(len(SERIES))))
    # the series must exercise what the property is about: history, updates, every table filled
    assert all(reference[t] for t in reference), {t: len(v) for t, v in reference.items()}
    assert q(pipeline_settings, "SELECT count(*) FROM core.dim_patient WHERE NOT is_current")[0][0] > 0
    assert q(pipeline_settings, "SELECT count(*) FROM core.fact_appointment WHERE date_extracted > "
                                "(SELECT min(date_extracted) FROM etl.load_run_files)")[0][0] > 0
    return pipeline_settings, reference


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=load_orders())
def test_core_is_independent_of_load_order(loaded_bucket, order):
    settings_, reference = loaded_bucket
    got = _load(settings_, order)
    for table in reference:
        assert got[table] == reference[table], (table, order)
