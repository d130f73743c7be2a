"""Names derived from contracts: schemas, tables and key columns. One place, so SQL and DDL agree."""

from __future__ import annotations

from contracts.model import ExtractSpec

RAW, STG, ETL, CORE = "raw", "stg", "etl", "core"
SCHEMAS = (RAW, STG, ETL, CORE)


def raw_table(spec: ExtractSpec) -> str:
    return f"{spec.table}_raw"


def stg_table(spec: ExtractSpec) -> str:
    return spec.table


def rejects_table(spec: ExtractSpec) -> str:
    return f"rejects_{spec.table}"


def domain_table(domain: str) -> str:
    return f"domain_{domain}"


def surrogate_key(core_table: str) -> str:
    """dim_patient -> patient_key; fact_appointment -> appointment_key."""
    return core_table.split("_", 1)[1] + "_key"


def reference_key(column: str) -> str:
    """The core FK column for a reference column: patient_id -> patient_key."""
    base = column[:-3] if column.endswith("_id") else column
    return f"{base}_key"


def nhi_hash_column(column: str) -> str:
    """nhi_number -> nhi_hash; other NHI-class columns keep their stem."""
    base = column[:-7] if column.endswith("_number") else column
    return f"{base}_hash"


def nhi_valid_column(column: str) -> str:
    base = column[:-7] if column.endswith("_number") else column
    return f"{base}_valid"


def nhi_key_version_column(column: str) -> str:
    """nhi_number -> nhi_key_version: the etl.nhi_key_versions version of the hash beside it."""
    base = column[:-7] if column.endswith("_number") else column
    return f"{base}_key_version"
