"""The one table from contract types to Postgres types and cast rules.

Every other module (schema, staging SQL, generator) asks this table; no other place decides how a
contract type is stored or parsed. Patterns are applied to the raw text *after* the staging step has
trimmed surrounding whitespace; they must be strict enough that a value which matches can be cast by
Postgres without raising (range checks that a pattern cannot express live in the staging SQL).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from sqlalchemy import BigInteger, Boolean, Date, Integer, Numeric, Text, Uuid
from sqlalchemy.dialects.postgresql import DOUBLE_PRECISION, TIMESTAMP
from sqlalchemy.types import TypeEngine


class ContractType(str, Enum):
    """The value types a contract column may declare."""

    TEXT = "text"
    BIGINT = "bigint"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    NUMERIC = "numeric"
    MONEY = "money"
    DOUBLE = "double"
    DATE = "date"
    TIMESTAMP_NZ = "timestamp_nz"
    UUID = "uuid"


@dataclass(frozen=True)
class TypeRule:
    """How one contract type is stored in stg/core and how its source text is checked."""

    sql_type: str
    """Postgres type name, as it appears in DDL."""
    sa_type: TypeEngine
    """The SQLAlchemy type used by the generated metadata."""
    pattern: str | None
    """POSIX regular expression the trimmed text must match to be castable (None: any text)."""
    rule: str
    """Name of the rule recorded in field_errors when the text does not parse."""


# Calendar-shaped dates: years 1000-9999, months 01-12, days 01-31. Whether day 29-31 exists in its
# month is checked by the staging SQL (contracts/sql/staging.py), only for those days.
_YMD = r"[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"

# Integer patterns bound the digit count so that the cast can never overflow: 18 digits fit in bigint,
# 9 digits fit in integer.
TYPE_RULES: dict[ContractType, TypeRule] = {
    ContractType.TEXT: TypeRule("text", Text(), None, "text"),
    ContractType.BIGINT: TypeRule("bigint", BigInteger(), r"^[+-]?[0-9]{1,18}$", "bigint"),
    ContractType.INTEGER: TypeRule("integer", Integer(), r"^[+-]?[0-9]{1,9}$", "integer"),
    ContractType.BOOLEAN: TypeRule("boolean", Boolean(), r"^[01]$", "boolean_0_1"),
    ContractType.NUMERIC: TypeRule(
        "numeric", Numeric(), r"^[+-]?([0-9]{1,28}(\.[0-9]{0,20})?|\.[0-9]{1,20})$", "numeric"
    ),
    ContractType.MONEY: TypeRule(
        "numeric(14,2)", Numeric(14, 2), r"^[+-]?([0-9]{1,12}(\.[0-9]{0,4})?|\.[0-9]{1,4})$", "money"
    ),
    ContractType.DOUBLE: TypeRule(
        "double precision",
        DOUBLE_PRECISION(),
        r"^[+-]?([0-9]{1,20}(\.[0-9]{0,200})?|\.[0-9]{1,200})([eE][+-]?[0-9]{1,2})?$",
        "double",
    ),
    ContractType.DATE: TypeRule(
        "date", Date(), "^" + _YMD + r"( 00:00:00(\.0{1,6})?)?$", "date"
    ),
    ContractType.TIMESTAMP_NZ: TypeRule(
        "timestamptz",
        TIMESTAMP(timezone=True),
        "^" + _YMD + r"[ T]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?$",
        "timestamp_nz",
    ),
    ContractType.UUID: TypeRule(
        "uuid",
        Uuid(as_uuid=False),
        r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$",
        "uuid",
    ),
}

# Where a value matches its pattern but cannot be stored as written, the type's rule fails too (the value
# is nullified with its error, or the row rejected for a required column), never the whole file:
# - dates and timestamps outside PLAUSIBLE_DATES (the date part, inclusive). A year-1000 typo would
#   otherwise reach core and stretch core.dim_date by centuries. The bounds are fixed dates, not "today
#   plus N years", so that re-staging the same raw rows always gives the same stg rows.
# - money that rounds (half away from zero, to 2 decimals) to 10^12 or more: numeric(14,2) overflows.
# - doubles: at most 200 fraction digits, so no value underflows to zero (which Postgres refuses).
PLAUSIBLE_DATES = ("1900-01-01", "2099-12-31")
MONEY_LIMIT = "999999999999.995"

# Dates before this are the source's way of saying "no date" (1900-01-01) and become NULL in stg.
NO_DATE_SENTINEL = "1900-01-01"

# Local times in the source are New Zealand wall-clock times.
SOURCE_TIME_ZONE = "Pacific/Auckland"


def rule_for(contract_type: ContractType | str) -> TypeRule:
    """The storage and parse rule of a contract type."""
    return TYPE_RULES[ContractType(contract_type)]


__all__ = [
    "ContractType",
    "TypeRule",
    "TYPE_RULES",
    "NO_DATE_SENTINEL",
    "PLAUSIBLE_DATES",
    "MONEY_LIMIT",
    "SOURCE_TIME_ZONE",
    "rule_for",
]
