"""Every key etl.config may hold: what it means, which values it takes, its default and its scope.

`indici-ingest config set` accepts only these keys and values (`parse`), `migrate` writes the defaults
(`global_defaults` beside the contracts' per-extract ones in worker/pipeline/migrate.py), and the code
that reads a key (worker.pipeline.config.get_value) gets the same default when a row is missing.

Scope: "extract" keys are set per extract (their defaults come from the contracts), "global" keys
only for '*', "any" keys for '*' (the default, written by migrate) and overridden per extract.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from contracts.model import ExtractSpec

GLOBAL = "*"

# Expected delivery -> days between deliveries (freshness: stale after these days + stale_grace_days).
DELIVERY_DAYS: dict[str, int | None] = {"daily": 1, "weekly": 7, "fortnightly": 14, "monthly": 31, "none": None}


class ConfigValueError(ValueError):
    """A value a key does not accept (the message says what it does accept)."""


def _number(low: float | None = None, high: float | None = None, *, above: float | None = None,
            integer: bool = False) -> Callable[[Any, ExtractSpec | None], Any]:
    def parse(value: Any, spec: ExtractSpec | None) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigValueError(f"{value!r} is not a number")
        if integer and int(value) != value:
            raise ConfigValueError(f"{value!r} is not a whole number")
        if low is not None and value < low or high is not None and value > high:
            raise ConfigValueError(f"{value!r} is outside {low}..{high}")
        if above is not None and value <= above:
            raise ConfigValueError(f"{value!r} must be more than {above}")
        return int(value) if integer else float(value)
    return parse


def _boolean(value: Any, spec: ExtractSpec | None) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigValueError(f"{value!r} is not true or false")


def _delivery(value: Any, spec: ExtractSpec | None) -> str:
    if value not in DELIVERY_DAYS:
        raise ConfigValueError(f"{value!r} is not one of {', '.join(DELIVERY_DAYS)}")
    return str(value)


def _null_rates(value: Any, spec: ExtractSpec | None) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ConfigValueError('expected a JSON object {"column": rate, ...}')
    known = {c.column for c in spec.columns} if spec is not None else set()
    rate = _number(0, 1)
    out = {}
    for column, limit in value.items():
        if column not in known:
            raise ConfigValueError(f"{column!r} is not a column of {spec.extract if spec else 'the extract'}")
        out[str(column)] = rate(limit, spec)
    return out


_BATCH = re.compile(r"^[0-9]{10}$")


def _batches(value: Any, spec: ExtractSpec | None) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) and _BATCH.match(v) for v in values):
        raise ConfigValueError("expected a list of DateExtracted values as in file names, e.g. [\"2508190850\"]")
    return list(values)


def _relaxed(value: Any, spec: ExtractSpec | None) -> dict[str, Any] | None:
    """{"from": "YYYY-MM-DD", "to": "YYYY-MM-DD", "max_reject_rate": r, "max_null_rate": {...},
    "reason": "..."}: thresholds for files whose DateExtracted (NZ date) is in [from, to]; null clears."""
    from datetime import date

    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConfigValueError('expected {"from": "2025-08-01", "to": "2025-08-31", "max_reject_rate": 0.2, '
                               '"reason": "..."} (or null to clear)')
    unknown = set(value) - {"from", "to", "max_reject_rate", "max_null_rate", "reason"}
    if unknown:
        raise ConfigValueError(f"unknown fields {sorted(unknown)}: from, to, max_reject_rate, max_null_rate, reason")
    out: dict[str, Any] = {}
    for end in ("from", "to"):
        try:
            out[end] = date.fromisoformat(str(value[end])).isoformat()
        except KeyError:
            raise ConfigValueError(f'"{end}" is required (a DateExtracted day, YYYY-MM-DD)') from None
        except ValueError:
            raise ConfigValueError(f'"{end}": {value[end]!r} is not a date (YYYY-MM-DD)') from None
    if out["from"] > out["to"]:
        raise ConfigValueError('"from" must not be after "to"')
    if "max_reject_rate" not in value and "max_null_rate" not in value:
        raise ConfigValueError("say which threshold is relaxed: max_reject_rate and/or max_null_rate")
    if "max_reject_rate" in value:
        out["max_reject_rate"] = _number(0, 1)(value["max_reject_rate"], spec)
    if "max_null_rate" in value:
        out["max_null_rate"] = _null_rates(value["max_null_rate"], spec)
    if "reason" in value:
        out["reason"] = str(value["reason"])[:300]
    return out


@dataclass(frozen=True)
class ConfigKey:
    name: str
    description: str
    parse: Callable[[Any, ExtractSpec | None], Any]
    scope: str  # extract | global | any
    default: Any = None  # for "extract" keys: the contract's (contracts/model.py DqSpec)


KEYS: dict[str, ConfigKey] = {k.name: k for k in (
    ConfigKey("max_reject_rate", "a file fails when rejected / read exceeds this", _number(0, 1), "extract"),
    ConfigKey("max_null_rate", "per column, a file fails when the share of NULLs exceeds this", _null_rates,
              "extract"),
    ConfigKey("min_rows_for_rates", "rate checks (and rate anomalies) apply from this many rows",
              _number(0, integer=True), "extract"),
    ConfigKey("full_file_deletes", "whether a full file removes the rows it no longer holds", _boolean, "extract",
              False),
    ConfigKey("relaxed_thresholds", "relaxed max_reject_rate / max_null_rate for files whose DateExtracted is "
              "in a window (a backfill of messier history); every use is recorded in the run's summary",
              _relaxed, "extract", None),
    ConfigKey("full_batches", "which batches (DateExtracted yyMMddHHmm, NZ) are full extracts", _batches, "any",
              []),
    ConfigKey("expected_delivery", "how often a batch is expected: " + ", ".join(DELIVERY_DAYS), _delivery, "any",
              "weekly"),
    ConfigKey("stale_grace_days", "health: stale when the newest DateExtracted is older than the expected "
              "delivery plus these days", _number(0), "any", 1),
    ConfigKey("stuck_run_hours", "health: a running run without progress for this long is stuck",
              _number(above=0), "global", 2),
    ConfigKey("anomaly_baseline_loads", "anomalies: the baseline is the median of this many earlier loads",
              _number(1, integer=True), "any", 5),
    ConfigKey("anomaly_min_baseline_loads", "anomalies: checked only once this many earlier loads exist",
              _number(1, integer=True), "any", 3),
    ConfigKey("anomaly_rows_factor", "anomalies: rows below median / factor or above median x factor",
              _number(above=1), "any", 2.0),
    ConfigKey("anomaly_reject_rate_points", "anomalies: reject rate above the median plus this",
              _number(0, 1), "any", 0.02),
    ConfigKey("anomaly_unmapped_rate_points", "anomalies: share of rows with an unmapped domain value above "
              "the median plus this", _number(0, 1), "any", 0.02),
    ConfigKey("anomaly_inferred_rate_points", "anomalies: inferred dimension members per staged row above "
              "the median plus this", _number(0, 1), "any", 0.05),
)}


def parse_text(text: str) -> Any:
    """A value as typed on the command line: JSON if it parses (3, 0.5, true, [..], {..}), else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def validate(key: str, extract: str, value: Any, spec: ExtractSpec | None) -> Any:
    """The normalised value, or ConfigValueError naming what is wrong."""
    if key not in KEYS:
        raise ConfigValueError(f"unknown key {key!r}; known keys: {', '.join(sorted(KEYS))}")
    entry = KEYS[key]
    if entry.scope == "global" and extract != GLOBAL:
        raise ConfigValueError(f"{key} applies to every extract: set it for '*'")
    if entry.scope == "extract" and extract == GLOBAL:
        raise ConfigValueError(f"{key} is set per extract (its default comes from the extract's contract)")
    return entry.parse(value, spec)


def global_defaults() -> list[tuple[str, str, Any]]:
    """(extract, key, value) rows for '*' that `migrate` adds when missing."""
    return [(GLOBAL, k.name, k.default) for k in KEYS.values() if k.scope in ("global", "any")]


def default(key: str) -> Any:
    return KEYS[key].default
