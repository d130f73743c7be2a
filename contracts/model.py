"""The pydantic model of an extract contract (one YAML file per extract in `contracts/extracts/`).

A spec is the only place a column is described: its source name, database name, type, whether it is
required, the coded-value domain it belongs to, its PII class and what happens when it does not parse.
Everything else (DDL, migrations, staging casts, merges, the generator) is derived from these objects.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contracts.types import ContractType

IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

# Columns that raw/stg add to every extract for lineage. A source column may not use these names.
LINEAGE_COLUMNS = (
    "load_file_id",
    "row_number",
    "s3_bucket",
    "s3_key",
    "s3_version_id",
    "file_hash",
    "date_extracted",
    "extract_type",
    "file_per_org_id",
    "file_practice_id",
    "load_run_id",
    "landed_at",
)
# Columns stg and core add (ordering, SCD2 validity, soft deletes); a source column may not use them either.
RESERVED_COLUMNS = LINEAGE_COLUMNS + (
    "field_errors",
    "staged_at",
    "date_to",
    "effective_from",
    "effective_to",
    "is_current",
    "is_inferred",
    "is_removed",
    "removed_at",
    "date_key",
    "merged_at",
)


class PiiClass(str, Enum):
    """How sensitive a column is, which decides where it may travel.

    - none: not personal.
    - nhi: a National Health Index number; validated, HMAC-hashed into core as nhi_hash, never stored
      plain in core.
    - name, contact, address, birth_date: identifying; kept in core dimensions (the PHO contacts its
      patients) but only readable by roles that may read core.
    - free_text: clinical or administrative notes; kept in raw and stg only, never copied to core.
    """

    NONE = "none"
    NHI = "nhi"
    NAME = "name"
    CONTACT = "contact"
    ADDRESS = "address"
    BIRTH_DATE = "birth_date"
    FREE_TEXT = "free_text"


class Identification(str, Enum):
    """How directly a column identifies a person: what the de-identified core (app_reader) may show.

    - direct: identifies a person on its own (names, NHI and its hash, contact details, addresses,
      record and card numbers, free text): never shown to app_reader.
    - quasi: identifies in combination with other columns (date of birth, date of death, meshblock):
      app_reader sees only its coarsened form (`coarsen`), and nothing when it has none.
    - none: shown to app_reader.

    Derived from `pii` unless a column says `identifies:` (which may only be stricter than the derived
    class); `identified_reader` sees every column of core whatever its class.
    """

    DIRECT = "direct"
    QUASI = "quasi"
    NONE = "none"


# What each PII class identifies by default; a column may only raise it.
PII_IDENTIFICATION = {
    PiiClass.NONE: Identification.NONE,
    PiiClass.NHI: Identification.DIRECT,
    PiiClass.NAME: Identification.DIRECT,
    PiiClass.CONTACT: Identification.DIRECT,
    PiiClass.ADDRESS: Identification.DIRECT,
    PiiClass.BIRTH_DATE: Identification.QUASI,
    PiiClass.FREE_TEXT: Identification.DIRECT,
}
_STRICTNESS = {Identification.NONE: 0, Identification.QUASI: 1, Identification.DIRECT: 2}


class Coarsening(str, Enum):
    """How a quasi identifier is shown to app_reader: a generated core column `<column>_<coarsening>`."""

    YEAR = "year"
    """A date becomes its year (smallint): year of birth instead of date of birth."""


def coarsened_column(column: "ColumnSpec") -> str:
    """The core column holding a quasi identifier's coarsened form: dob -> dob_year."""
    if column.coarsening is None:
        raise ValueError(f"{column.column} has no coarsened form")
    return f"{column.column}_{column.coarsening.value}"


class Severity(str, Enum):
    """What a value that breaks its column's rule does to the row."""

    REJECT = "reject"
    """The row goes to etl.rejects_<table> with every failing column listed."""
    NULLIFY = "nullify"
    """The value becomes NULL, the row is kept, and the error is recorded with it."""


class ColumnSpec(BaseModel):
    """One source field, in file order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(description="The field name in the provider's documentation.")
    column: str = Field(description="The snake_case database column (extracts.yaml's `column`).")
    type: ContractType = Field(description="Contract type; see contracts/types.py.")
    required: bool = Field(default=False, description="Empty or unparseable means reject the row.")
    references: str | None = Field(
        default=None, description="Extract whose id this column holds (e.g. Patients); a reference."
    )
    domain: str | None = Field(
        default=None, description="Name of the etl.domain_<name> mapping table for coded values."
    )
    unmapped: Literal["report", "reject"] = Field(
        default="report", description="What a value not yet in the domain table does to the row."
    )
    pii: PiiClass = Field(default=PiiClass.NONE, description="Sensitivity class; see PiiClass.")
    identifies: Identification | None = Field(
        default=None, description="Identification class when stricter than the pii class implies."
    )
    coarsen: Coarsening | None = Field(
        default=None, description="Coarsened form of a quasi identifier for app_reader (birth dates: year)."
    )
    description: str | None = None

    @property
    def identification(self) -> Identification:
        """The column's identification class (see Identification)."""
        return self.identifies or PII_IDENTIFICATION[self.pii]

    @property
    def coarsening(self) -> Coarsening | None:
        """The coarsened form app_reader sees of a quasi identifier (birth dates: the year)."""
        if self.coarsen is not None:
            return self.coarsen
        return Coarsening.YEAR if self.pii is PiiClass.BIRTH_DATE else None

    @model_validator(mode="after")
    def _check(self) -> "ColumnSpec":
        if not IDENTIFIER.match(self.column):
            raise ValueError(f"column {self.column!r} is not a plain lower-case identifier")
        if self.domain is not None and not IDENTIFIER.match(self.domain):
            raise ValueError(f"domain {self.domain!r} of {self.column} is not a plain identifier")
        if self.references is not None and self.type not in (ContractType.BIGINT, ContractType.INTEGER):
            raise ValueError(f"reference column {self.column} must be an integer type")
        if self.pii is PiiClass.NHI and self.type is not ContractType.TEXT:
            raise ValueError(f"NHI column {self.column} must be text")
        derived = PII_IDENTIFICATION[self.pii]
        if self.identifies is not None and _STRICTNESS[self.identifies] < _STRICTNESS[derived]:
            raise ValueError(
                f"{self.column}: identifies {self.identifies.value} is weaker than its pii class "
                f"{self.pii.value} ({derived.value})"
            )
        if self.coarsen is not None and self.identification is not Identification.QUASI:
            raise ValueError(f"{self.column}: only a quasi identifier is coarsened")
        if self.coarsening is Coarsening.YEAR and self.type is not ContractType.DATE:
            raise ValueError(f"{self.column}: coarsen year needs a date column")
        return self


class DimensionSpec(BaseModel):
    """The extract becomes an SCD2 dimension in core."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["dimension"]
    table: str = Field(description="core table name, e.g. dim_patient.")
    tracked: list[str] = Field(
        description="Columns whose change opens a new SCD2 version; the others update in place."
    )


class FactSpec(BaseModel):
    """The extract becomes a fact in core (newest version wins)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["fact"]
    table: str = Field(description="core table name, e.g. fact_appointment.")
    main_date: str = Field(description="The fact's main date column (required, keyed to dim_date).")


class DataQualitySpec(BaseModel):
    """Per-extract thresholds; loaded into etl.config, where operators may override them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_reject_rate: float = Field(default=0.05, ge=0, le=1, description="Rejected / read, per file.")
    min_rows_for_rates: int = Field(
        default=100, ge=0,
        description="Rate thresholds apply only to files with at least this many rows: in a 10-row "
        "delta one bad row is 10%, and failing the file would hold back its nine good rows.",
    )
    max_null_rate: dict[str, float] = Field(
        default_factory=dict, description="Per column: the largest share of NULLs allowed in stg."
    )


class ExtractSpec(BaseModel):
    """The contract of one Indici extract."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    extract: str = Field(description="Extract name as in extracts.yaml (e.g. Appointments).")
    table: str = Field(description="Base table name: raw.<table>_raw, stg.<table>, etl.rejects_<table>.")
    file_tokens: list[str] = Field(min_length=1, description="ExtractType spellings in file names.")
    natural_key: list[str] = Field(min_length=1, description="Columns identifying a source row.")
    core: DimensionSpec | FactSpec = Field(discriminator="role")
    dq: DataQualitySpec = Field(default_factory=DataQualitySpec)
    columns: list[ColumnSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> "ExtractSpec":
        names = [c.column for c in self.columns]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"{self.extract}: duplicated columns {duplicated}")
        with_coarsened = names + [coarsened_column(c) for c in self.columns if c.coarsening]
        duplicated = sorted({n for n in with_coarsened if with_coarsened.count(n) > 1})
        if duplicated:
            raise ValueError(f"{self.extract}: coarsened columns {duplicated} clash with other columns")
        clash = sorted(set(with_coarsened) & set(RESERVED_COLUMNS))
        if clash:
            raise ValueError(f"{self.extract}: columns {clash} clash with lineage/reserved column names")
        known = set(names)
        for key in self.natural_key:
            if key not in known:
                raise ValueError(f"{self.extract}: natural key column {key} is not a column")
            if not self.column(key).required:
                raise ValueError(f"{self.extract}: natural key column {key} must be required")
        if isinstance(self.core, DimensionSpec):
            missing = [c for c in self.core.tracked if c not in known]
            if missing:
                raise ValueError(f"{self.extract}: tracked columns {missing} are not columns")
        else:
            if self.core.main_date not in known:
                raise ValueError(f"{self.extract}: main_date {self.core.main_date} is not a column")
            main = self.column(self.core.main_date)
            if not main.required or main.type not in (ContractType.DATE, ContractType.TIMESTAMP_NZ):
                raise ValueError(f"{self.extract}: main_date must be a required date or timestamp")
        for col, _ in self.max_null_rate_items():
            if col not in known:
                raise ValueError(f"{self.extract}: dq.max_null_rate names unknown column {col}")
        return self

    # -- helpers used by the generators -------------------------------------------------------------
    def max_null_rate_items(self) -> list[tuple[str, float]]:
        return sorted(self.dq.max_null_rate.items())

    def column(self, name: str) -> ColumnSpec:
        for col in self.columns:
            if col.column == name:
                return col
        raise KeyError(f"{self.extract} has no column {name}")

    @property
    def column_names(self) -> list[str]:
        return [c.column for c in self.columns]

    @property
    def field_count(self) -> int:
        return len(self.columns)

    @property
    def id_column(self) -> str:
        """The extract's own id column (the first natural-key column)."""
        return self.natural_key[0]

    @property
    def is_dimension(self) -> bool:
        return isinstance(self.core, DimensionSpec)

    def severity(self, column: ColumnSpec) -> Severity:
        """Reject for keys, required columns and references (PRODUCT.md); nullify for the rest."""
        if column.required or column.column in self.natural_key or column.references is not None:
            return Severity.REJECT
        return Severity.NULLIFY
