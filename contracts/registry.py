"""Loads and validates every extract contract, and checks them against the provider documentation."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import yaml

from contracts.model import ExtractSpec

SPEC_DIR = Path(__file__).resolve().parent / "extracts"


class ContractError(ValueError):
    """A spec is missing, malformed or disagrees with another spec."""


def load_spec(path: Path) -> ExtractSpec:
    with path.open(encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    try:
        return ExtractSpec.model_validate(data)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ContractError(f"{path.name}: {exc}") from exc


@lru_cache(maxsize=1)
def load_all(spec_dir: Path = SPEC_DIR) -> dict[str, ExtractSpec]:
    """Every spec, keyed by extract name, in name order."""
    specs = [load_spec(p) for p in sorted(spec_dir.glob("*.yaml"))]
    if not specs:
        raise ContractError(f"no contracts found in {spec_dir}")
    by_name = {s.extract: s for s in specs}
    _check_cross_references(by_name)
    return dict(sorted(by_name.items()))


def _check_cross_references(specs: dict[str, ExtractSpec]) -> None:
    tables = [s.table for s in specs.values()]
    if len(set(tables)) != len(tables):
        raise ContractError("two contracts share a table name")
    core_tables = [s.core.table for s in specs.values()]
    if len(set(core_tables)) != len(core_tables):
        raise ContractError("two contracts share a core table name")
    tokens: dict[str, str] = {}
    for spec in specs.values():
        for token in spec.file_tokens:
            other = tokens.setdefault(token.lower(), spec.extract)
            if other != spec.extract:
                raise ContractError(f"file token {token} is claimed by {other} and {spec.extract}")
        for col in spec.columns:
            if col.references is not None and col.references not in specs:
                raise ContractError(f"{spec.extract}.{col.column} references unknown {col.references}")


def get(extract: str) -> ExtractSpec:
    """The spec of one extract by name (case-insensitive) or by file token."""
    wanted = extract.lower()
    for spec in load_all().values():
        if spec.extract.lower() == wanted or wanted in (t.lower() for t in spec.file_tokens):
            return spec
    raise KeyError(f"no contract for extract {extract!r}")


def by_table(table: str) -> ExtractSpec:
    for spec in load_all().values():
        if spec.table == table:
            return spec
    raise KeyError(f"no contract for table {table!r}")


def token_pattern() -> re.Pattern[str]:
    """A regular expression matching any file token, longest first, case-insensitively."""
    tokens = sorted({t for s in load_all().values() for t in s.file_tokens}, key=len, reverse=True)
    return re.compile("|".join(re.escape(t) for t in tokens), re.IGNORECASE)


def extract_for_token(token: str) -> ExtractSpec:
    return get(token)


def domains() -> dict[str, list[tuple[str, str]]]:
    """Domain name -> the (extract, column) pairs that use it."""
    found: dict[str, list[tuple[str, str]]] = {}
    for spec in load_all().values():
        for col in spec.columns:
            if col.domain:
                found.setdefault(col.domain, []).append((spec.extract, col.column))
    return dict(sorted(found.items()))


DOMAINS_FILE = Path(__file__).resolve().parent / "domains.yaml"


@lru_cache(maxsize=1)
def known_domain_values(path: Path = DOMAINS_FILE) -> dict[str, dict[str, str]]:
    """Domain name -> {value: label} of the values documented publicly (contracts/domains.yaml)."""
    with path.open(encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    used = domains()
    unknown = sorted(set(data) - set(used))
    if unknown:
        raise ContractError(f"{path.name}: domains {unknown} are used by no contract column")
    return {name: {str(v): str(label) for v, label in values.items()} for name, values in data.items()}


def dimension_for(extract: str) -> ExtractSpec | None:
    """The dimension spec an extract's id is kept in, if that extract is a dimension."""
    spec = get(extract)
    return spec if spec.is_dimension else None
