"""etl.config keys: validated values, scopes and the defaults migrate writes."""

from __future__ import annotations

import pytest

from contracts.registry import get as get_spec
from worker.pipeline.config_keys import KEYS, ConfigValueError, global_defaults, parse_text, validate


def test_values_typed_on_the_command_line():
    assert parse_text("0.5") == 0.5 and parse_text("true") is True and parse_text("weekly") == "weekly"
    assert parse_text('{"dob": 0.1}') == {"dob": 0.1}


@pytest.mark.parametrize("key, extract, value, expected", [
    ("max_reject_rate", "Appointments", 0.1, 0.1),
    ("min_rows_for_rates", "Appointments", 10, 10),
    ("expected_delivery", "*", "monthly", "monthly"),
    ("full_batches", "Patients", "2508190850", ["2508190850"]),
    ("max_null_rate", "Patients", {"dob": 0.02}, {"dob": 0.02}),
    ("anomaly_rows_factor", "*", 3, 3.0),
    ("stuck_run_hours", "*", 6, 6.0),
])
def test_good_values(key, extract, value, expected):
    spec = None if extract == "*" else get_spec(extract)
    assert validate(key, extract, value, spec) == expected


@pytest.mark.parametrize("key, extract, value, message", [
    ("max_reject_rate", "Appointments", 1.5, "outside"),
    ("max_reject_rate", "Appointments", "high", "not a number"),
    ("max_reject_rate", "*", 0.1, "per extract"),
    ("min_rows_for_rates", "Appointments", 2.5, "whole number"),
    ("expected_delivery", "Vaccine", "hourly", "not one of"),
    ("stuck_run_hours", "Vaccine", 3, "set it for '*'"),
    ("anomaly_rows_factor", "*", 1, "more than 1"),
    ("full_file_deletes", "Patients", "yes", "true or false"),
    ("max_null_rate", "Patients", {"nope": 0.1}, "not a column"),
    ("nope", "*", 1, "unknown key"),
])
def test_bad_values_say_what_is_accepted(key, extract, value, message):
    spec = None if extract == "*" else get_spec(extract)
    with pytest.raises(ConfigValueError, match=message):
        validate(key, extract, value, spec)


def test_global_defaults_cover_every_global_key_and_validate():
    rows = global_defaults()
    assert {k for _, k, _ in rows} == {k.name for k in KEYS.values() if k.scope in ("global", "any")}
    for extract, key, value in rows:
        assert extract == "*" and validate(key, extract, value, None) == value
    assert dict((k, v) for _, k, v in rows)["expected_delivery"] == "weekly"
