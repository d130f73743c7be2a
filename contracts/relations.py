"""How contracts relate: which fact columns point at which dimension. One rule for DDL and merges."""

from __future__ import annotations

from dataclasses import dataclass

from contracts import naming
from contracts.model import ExtractSpec


@dataclass(frozen=True)
class Reference:
    """A fact column that points at a dimension: core FK column fk -> target's surrogate key."""

    column: str  # fact column holding the target's id (patient_id, practice_id, ...)
    target: ExtractSpec
    fk: str  # core FK column (patient_key)
    match: tuple[tuple[str, str], ...]  # (target natural-key column, fact column)


def references(spec: ExtractSpec, specs: dict[str, ExtractSpec]) -> list[Reference]:
    """The FK columns of a fact's core table: practice_id, then every column referencing a dimension.

    contracts/schema.py builds the FK columns from this list and contracts/sql/merge.py resolves them.
    """
    if spec.is_dimension:
        return []
    dims = {n: s for n, s in specs.items() if s.is_dimension}
    refs = [c for c in spec.columns if c.references in dims]
    if "practice_id" in spec.column_names and "PracticeInfo" in dims:
        refs = [spec.column("practice_id"), *refs]
    out = []
    for ref in refs:
        target = dims["PracticeInfo" if ref.column == "practice_id" else ref.references]
        match = [(target.natural_key[0], ref.column)]
        for other in target.natural_key[1:]:
            if other not in spec.column_names:
                raise ValueError(f"{spec.extract}.{ref.column}: no column {other} to match {target.extract}")
            match.append((other, other))
        out.append(Reference(ref.column, target, naming.reference_key(ref.column), tuple(match)))
    return out
