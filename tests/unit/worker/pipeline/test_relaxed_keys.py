"""etl.config `relaxed_thresholds`: a window of DateExtracted days and the thresholds it relaxes."""

from __future__ import annotations

import pytest

from contracts.registry import get as get_spec
from worker.pipeline.config_keys import ConfigValueError, validate


def test_a_window_is_normalised():
    value = validate("relaxed_thresholds", "Patients",
                     {"from": "2024-01-01", "to": "2024-12-31", "max_reject_rate": 0.2, "max_null_rate": {"dob": 1},
                      "reason": "2024 backfill"}, get_spec("Patients"))
    assert value == {"from": "2024-01-01", "to": "2024-12-31", "max_reject_rate": 0.2,
                     "max_null_rate": {"dob": 1.0}, "reason": "2024 backfill"}
    assert validate("relaxed_thresholds", "Patients", None, get_spec("Patients")) is None  # clears


@pytest.mark.parametrize("value, message", [
    ({"from": "2024-01-01", "max_reject_rate": 0.2}, '"to" is required'),
    ({"from": "2024-02-30", "to": "2024-03-01", "max_reject_rate": 0.2}, "is not a date"),
    ({"from": "2024-03-01", "to": "2024-02-01", "max_reject_rate": 0.2}, "must not be after"),
    ({"from": "2024-01-01", "to": "2024-02-01"}, "say which threshold"),
    ({"from": "2024-01-01", "to": "2024-02-01", "max_reject_rate": 2}, "outside"),
    ({"from": "2024-01-01", "to": "2024-02-01", "max_null_rate": {"nope": 0.5}}, "not a column"),
    ({"from": "2024-01-01", "to": "2024-02-01", "max_reject_rate": 0.2, "until": 1}, "unknown fields"),
    (0.2, "expected"),
])
def test_bad_windows_say_what_is_accepted(value, message):
    with pytest.raises(ConfigValueError, match=message):
        validate("relaxed_thresholds", "Patients", value, get_spec("Patients"))


def test_a_window_is_per_extract():
    with pytest.raises(ConfigValueError, match="per extract"):
        validate("relaxed_thresholds", "*", {"from": "2024-01-01", "to": "2024-01-02", "max_reject_rate": 0.2}, None)
