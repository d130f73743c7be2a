"""A referentially consistent synthetic population of every extract, per practice, that evolves by batches.

Sizes scale from the number of patients per practice (``patients``): e.g. ~4 appointments, ~2.4 invoices
and ~1 diagnosis per patient. Every row id is allocated before any row is generated, so a reference
column (``ColumnSpec.references``) can always be filled with an id that exists in the referenced extract
of the same practice, cycles included. When an extract references another *fact* (Immunisations ->
Appointments), that fact is the row's parent: the row copies the parent's patient/provider/... ids and
takes its dates from the parent's, so the data hangs together.

:class:`Population` holds the current state (rows, per-row anchor times). :meth:`Population.full` makes
the first batch; :meth:`Population.delta` then adds rows, updates facts (new values, same natural key)
and changes tracked attributes of dimension members, returning only the changed/new rows, as a delta
file does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from random import Random
from typing import Iterable, Mapping, Sequence

from contracts.model import ColumnSpec, ExtractSpec
from contracts.types import ContractType

from worker.synth import values as V

#: rows per patient (per practice); None = fixed catalogue / one row
ROWS_PER_PATIENT: dict[str, float] = {
    "Patients": 1.0,
    "Providers": 1 / 250,
    "Appointments": 4.0,
    "Immunisations": 0.8,
    "AppointmentMedications": 1.5,
    "Diagnoses": 1.0,
    "Measurements": 1.2,
    "Invoices": 2.4,
    "InvoiceDetail": 4.0,
    "Allergies": 0.25,
    "Recalls": 0.5,
    "NextOfKin": 0.4,
    "PatientAlerts": 0.2,
    "Inbox": 0.8,
    "InboxDetail": 2.4,
}
MIN_ROWS: dict[str, int] = {"Providers": 3}
CATALOGUES = {"Vaccine": len(V.VACCINES), "Medicine": len(V.MEDICINES)}
DEFAULT_ROWS_PER_PATIENT = 1.0

#: share of existing rows a delta adds / updates
DELTA_NEW_FACT = 0.04
DELTA_NEW_DIM = 0.01
DELTA_UPDATE_FACT = 0.05
DELTA_UPDATE_DIM = 0.04
#: share of optional reference columns left empty
OPTIONAL_REF_EMPTY = 0.1

HISTORY_DAYS = 730
DIM_HISTORY_DAYS = 3650

#: dimension attributes a delta prefers to change (when the spec tracks them): surname, address, enrolment
PREFERRED_DIM_CHANGES = ("family_name", "permanent_address", "enrolment_status", "register_status",
                         "practice_name", "medicine_name", "vaccine_name", "user_role")
NAME_COLUMNS = ("full_name", "medicine_name", "vaccine_name", "practice_name", "name")
_FIXED_EXCLUDED = ("per_org_id", "practice_id", "loaded_date_time")


@dataclass
class Window:
    """The time frame of one batch, as seconds since values.BASE_DATE (NZ local)."""

    date_from: int
    date_to: int
    loaded: str  # the batch's LoadedDateTime text


@dataclass
class Table:
    """Current rows of one extract for one practice."""

    spec: ExtractSpec
    practice: V.PracticeInfo
    rows: list[tuple[str, ...]] = field(default_factory=list)  # immutable: callers get list copies
    pos: dict[str, int] = field(default_factory=dict)
    anchor: list[int] = field(default_factory=list)
    ins: list[int] = field(default_factory=list)

    def add(self, rows: Sequence[tuple[str, ...]], anchor: Sequence[int], ins: Sequence[int]) -> None:
        idx = self.spec.column_names.index(self.spec.id_column)
        for r, a, i in zip(rows, anchor, ins):
            self.pos[r[idx]] = len(self.rows)
            self.rows.append(r)
            self.anchor.append(a)
            self.ins.append(i)


def reference_order(specs: Mapping[str, ExtractSpec]) -> list[str]:
    """Extracts ordered so that referenced extracts come first (cycles broken: dimensions first, then name)."""
    deps = {
        name: {c.references for c in s.columns if c.references and c.references != name and c.references in specs}
        for name, s in specs.items()
    }
    done: list[str] = []
    left = set(specs)
    while left:
        ready = sorted(n for n in left if not (deps[n] & left))
        if not ready:  # a cycle: take the node with the fewest open deps, dimensions first
            ready = [min(left, key=lambda n: (len(deps[n] & left), not specs[n].is_dimension, n))]
        for n in ready:
            done.append(n)
            left.discard(n)
    return done


def parent_extract(spec: ExtractSpec, specs: Mapping[str, ExtractSpec]) -> ColumnSpec | None:
    """The reference column pointing at the fact this row belongs to (None when it only points at dimensions)."""
    best: tuple[int, str, ColumnSpec] | None = None
    for col in spec.columns:
        target = specs.get(col.references) if col.references else None
        if target is None or target.extract == spec.extract or target.is_dimension:
            continue
        if col.column != target.id_column:  # e.g. ext_appointment_id: a reference, not the parent
            continue
        weight = sum(1 for c in target.columns if c.references)
        cand = (weight, target.extract, col)
        if best is None or (cand[0], cand[1]) > (best[0], best[1]):
            best = cand
    return best[2] if best else None


def _id_sort_key(v: str) -> tuple[int, int | str]:
    return (0, int(v)) if v.isdigit() else (1, v)


class Population:
    """The evolving synthetic data of every extract in ``specs`` for every practice."""

    def __init__(
        self,
        specs: Mapping[str, ExtractSpec],
        practices: Sequence[tuple[int, int]],
        patients: int,
        seed: int,
    ) -> None:
        if patients < 1:
            raise ValueError("patients must be >= 1")
        if not practices:
            raise ValueError("at least one practice is needed")
        if len(set(practices)) != len(practices):
            raise ValueError("practices must be distinct (per_org_id, practice_id) pairs")
        self.specs = dict(specs)
        self.seed = seed
        self.patients = patients
        self.practices = [V.make_practice(o, p, i) for i, (o, p) in enumerate(practices)]
        self.order = reference_order(self.specs)
        self.tables: dict[tuple[str, tuple[int, int]], Table] = {
            (name, pr.key): Table(self.specs[name], pr) for name in self.order for pr in self.practices
        }
        self._next_id: dict[str, int] = {}
        self._nhis: set[str] = set()
        self._ids: dict[tuple[str, tuple[int, int]], list[str]] = {}
        self.batches_made = 0

    # -- sizes and ids ---------------------------------------------------------------------------
    def initial_count(self, spec: ExtractSpec) -> int:
        if spec.id_column == "practice_id":
            return 1
        if spec.extract in CATALOGUES:
            return CATALOGUES[spec.extract]
        ratio = ROWS_PER_PATIENT.get(spec.extract, DEFAULT_ROWS_PER_PATIENT)
        return max(MIN_ROWS.get(spec.extract, 1), round(self.patients * ratio))

    def _new_ids(self, spec: ExtractSpec, practice: V.PracticeInfo, n: int, rng: Random) -> list[str]:
        if spec.id_column == "practice_id":
            return [str(practice.practice_id)] if n else []
        id_col = spec.column(spec.id_column)
        if id_col.type is ContractType.UUID:
            return [V.fmt_uuid(rng.getrandbits(128)) for _ in range(n)]
        nxt = self._next_id.get(spec.extract)
        if nxt is None:
            nxt = 1_000_000 + (V.stable_hash(spec.extract) % 89) * 100_000
        if id_col.type is ContractType.INTEGER:
            nxt = min(nxt, 100_000_000)
        ids = [str(nxt + i) for i in range(n)]
        self._next_id[spec.extract] = nxt + n
        return ids

    def ids(self, extract: str, practice_key: tuple[int, int]) -> list[str]:
        """Every id of ``extract`` in this practice that exists (or is being created in the current batch)."""
        return self._ids.get((extract, practice_key), [])

    # -- lookups -----------------------------------------------------------------------------------
    def _display_names(self, extract: str, practice_key: tuple[int, int]) -> dict[str, str]:
        table = self.tables.get((extract, practice_key))
        if table is None or not table.rows:
            return {}
        names = table.spec.column_names
        for cand in NAME_COLUMNS:
            if cand in names:
                i = names.index(cand)
                j = names.index(table.spec.id_column)
                return {r[j]: r[i] for r in table.rows}
        if "first_name" in names and "family_name" in names:
            i, k, j = names.index("first_name"), names.index("family_name"), names.index(table.spec.id_column)
            return {r[j]: f"{r[i]} {r[k]}" for r in table.rows}
        return {}

    def _staff(self, practice: V.PracticeInfo) -> list[str]:
        for name, spec in self.specs.items():
            if spec.is_dimension and {"provider_id", "full_name"} <= set(spec.column_names) and name != "Patients" \
                    and spec.id_column == "provider_id":
                names = list(self._display_names(name, practice.key).values())
                if names:
                    return names
        return ["Default PROVIDER", "Summer QUINN", "Teena TE MANA"]

    def _lookup_columns(self, spec: ExtractSpec) -> dict[str, ColumnSpec]:
        """Text columns that hold the display name of a referenced member: text column -> its id column."""
        by_name = {c.column: c for c in spec.columns}
        out: dict[str, ColumnSpec] = {}
        for col in spec.columns:
            if col.type is not ContractType.TEXT or col.domain:
                continue
            base = col.column
            cands = [base + "_id", base.removesuffix("_name") + "_id"]
            for cand in cands:
                ref = by_name.get(cand)
                if ref is not None and ref.references and ref is not col:
                    out[col.column] = ref
                    break
        return out

    # -- row generation ----------------------------------------------------------------------------
    def _generate(
        self,
        spec: ExtractSpec,
        practice: V.PracticeInfo,
        ids: list[str],
        window: Window,
        *,
        full: bool,
        rng: Random,
    ) -> tuple[list[tuple[str, ...]], list[int], list[int]]:
        n = len(ids)
        if n == 0:
            return [], [], []
        lo, hi = window.date_from, window.date_to
        names = spec.column_names
        fixed: dict[str, list[str]] = {spec.id_column: ids}
        r = rng.random
        main = V.main_date_column(spec)

        # parent fact, anchors
        parent_col = parent_extract(spec, self.specs)
        parent_rows: list[int | None] = [None] * n
        parent_table = None
        if parent_col is not None:
            parent_table = self.tables[(parent_col.references, practice.key)]  # type: ignore[index]
            cands = list(range(len(parent_table.rows)))
            if not full:
                recent = [i for i in cands if parent_table.anchor[i] >= lo - 14 * V.DAY]
                cands = recent or cands
            if cands:
                empty = 0.0 if parent_col.required else OPTIONAL_REF_EMPTY
                m = len(cands)
                parent_rows = [None if r() < empty else cands[int(r() * m)] for _ in range(n)]

        future = 0.0
        if main and ("schedule" in main):
            future = 0.08
        elif main and ("recall" in main or "re_call" in main or "due" in main):
            future = 0.6
        if spec.is_dimension:
            span_lo = hi - DIM_HISTORY_DAYS * V.DAY if full else lo
        else:
            span_lo = hi - HISTORY_DAYS * V.DAY if full else lo
        anchor: list[int] = []
        for p in parent_rows:
            if p is not None and parent_table is not None:
                a = parent_table.anchor[p] + int(r() * 7200)
            elif future and r() < future:
                a = hi + 3600 + int(r() * 42 * V.DAY)
            else:
                a = span_lo + int(r() * max(hi - span_lo, 1))
            anchor.append(V.fix_dst(a))
        if main == "inserted_at":
            ins = list(anchor)
        elif full:
            ins = [min(a, hi) - int(r() * 14 * V.DAY) for a in anchor]
        else:
            ins = [lo + int(r() * max(hi - lo, 1)) for _ in anchor]
            ins = [min(i, max(a, lo)) if a >= lo else i for i, a in zip(ins, anchor)]
        ins = [V.fix_dst(i) for i in ins]

        # references
        parent_spec = self.specs[parent_col.references] if parent_col is not None else None  # type: ignore[index]
        for col in spec.columns:
            if not col.references or col.column == spec.id_column:
                continue
            if col.column in _FIXED_EXCLUDED:
                continue
            pool = self.ids(col.references, practice.key)
            empty = 0.0 if col.required else OPTIONAL_REF_EMPTY
            vec: list[str] = []
            if col is parent_col and parent_table is not None:
                j = parent_table.spec.column_names.index(parent_table.spec.id_column)
                vec = [parent_table.rows[p][j] if p is not None else "" for p in parent_rows]
                if col.required:
                    vec = [v or pool[int(r() * len(pool))] for v in vec]
            else:
                copy_idx = None
                if parent_spec is not None and parent_table is not None and col.column in parent_spec.column_names:
                    pc = parent_spec.column(col.column)
                    if pc.references == col.references:
                        copy_idx = parent_spec.column_names.index(col.column)
                m = len(pool)
                for p in parent_rows:
                    if copy_idx is not None and p is not None:  # the parent's value, even when it is empty
                        v = parent_table.rows[p][copy_idx]  # type: ignore[union-attr]
                        if not v and col.required and m:
                            v = pool[int(r() * m)]
                    elif m and (col.required or r() >= empty):
                        v = pool[int(r() * m)]
                    else:
                        v = ""
                    vec.append(v)
            fixed[col.column] = vec

        # display names of referenced members (patient, provider, vaccine_name, ...)
        for text_col, id_col in self._lookup_columns(spec).items():
            lookup = self._display_names(id_col.references, practice.key)  # type: ignore[arg-type]
            if lookup:
                fixed[text_col] = [lookup.get(v, "") for v in fixed.get(id_col.column, [""] * n)]

        # coherent people, catalogues, NHIs
        fixed.update(V.person_columns(spec, rng, n, hi))
        if spec.extract == "Vaccine":
            start = len(self.tables[(spec.extract, practice.key)].rows)
            for c, k in (("vaccine_code", 0), ("vaccine_name", 1), ("long_description", 1)):
                if c in names and spec.column(c).type is ContractType.TEXT:
                    fixed[c] = [V.VACCINES[(start + i) % len(V.VACCINES)][k] for i in range(n)]
        if spec.extract == "Medicine":
            start = len(self.tables[(spec.extract, practice.key)].rows)
            for c in ("medicine_name", "medicine_short_name"):
                if c in names and spec.column(c).type is ContractType.TEXT:
                    fixed[c] = [V.MEDICINES[(start + i) % len(V.MEDICINES)] for i in range(n)]
        nhi_cols = [c for c in spec.columns if V.is_nhi_column(c) and c.type is ContractType.TEXT]
        if spec.is_dimension and spec.extract == "Patients":
            for c in nhi_cols:
                fixed[c.column] = V.unique_nhis(rng, n, self._nhis)
        if spec.id_column == "practice_id" and "practice_name" in names:
            fixed["practice_name"] = [practice.name] * n

        ctx = V.Ctx(
            rng=rng, n=n, practice=practice, anchor=anchor, ins=ins,
            upd_lo=span_lo if full else lo, hi=hi, loaded=window.loaded, fixed=fixed,
            staff=self._staff(practice),
        )
        rows = list(zip(*V.build_columns(spec, ctx)))
        return rows, anchor, ins

    def _generation_round(self, counts: Mapping[tuple[str, tuple[int, int]], int], window: Window,
                          *, full: bool, batch: int) -> dict[tuple[str, tuple[int, int]], list[tuple[str, ...]]]:
        new_ids: dict[tuple[str, tuple[int, int]], list[str]] = {}
        for name in self.order:
            spec = self.specs[name]
            for pr in self.practices:
                key = (name, pr.key)
                ids = self._new_ids(spec, pr, counts.get(key, 0), V.sub_rng(self.seed, "ids", batch, name, pr.key))
                new_ids[key] = ids
                self._ids.setdefault(key, []).extend(ids)
        out: dict[tuple[str, tuple[int, int]], list[tuple[str, ...]]] = {}
        for name in self.order:
            spec = self.specs[name]
            for pr in self.practices:
                key = (name, pr.key)
                rng = V.sub_rng(self.seed, "rows", batch, name, pr.key)
                rows, anchor, ins = self._generate(spec, pr, new_ids[key], window, full=full, rng=rng)
                self.tables[key].add(rows, anchor, ins)
                out[key] = rows
        return out

    # -- batches ------------------------------------------------------------------------------------
    def full(self, window: Window) -> dict[tuple[str, tuple[int, int]], list[list[str]]]:
        """Every row of every extract and practice (the first, full batch)."""
        if self.batches_made:
            raise RuntimeError("the full batch has been made already")
        counts = {(n, pr.key): self.initial_count(self.specs[n]) for n in self.order for pr in self.practices}
        out = self._generation_round(counts, window, full=True, batch=0)
        self.batches_made = 1
        return {k: [list(r) for r in v] for k, v in out.items()}

    def delta(self, window: Window) -> dict[tuple[str, tuple[int, int]], list[list[str]]]:
        """The changes of one delta batch: updated rows (same key, new values) plus new rows, sorted by id."""
        if not self.batches_made:
            raise RuntimeError("make the full batch first")
        batch = self.batches_made
        # 1. updates of existing rows (before new rows exist, so only old members change)
        updated: dict[tuple[str, tuple[int, int]], list[int]] = {}
        for name in self.order:
            spec = self.specs[name]
            for pr in self.practices:
                key = (name, pr.key)
                rng = V.sub_rng(self.seed, "update", batch, name, pr.key)
                updated[key] = self._update(self.tables[key], window, rng)
        # 2. new rows
        counts: dict[tuple[str, tuple[int, int]], int] = {}
        for name in self.order:
            spec = self.specs[name]
            for pr in self.practices:
                table = self.tables[(name, pr.key)]
                n = len(table.rows)
                if spec.id_column == "practice_id" or spec.extract in CATALOGUES:
                    k = 0
                elif spec.is_dimension:
                    k = round(n * DELTA_NEW_DIM)
                    if name == "Patients":
                        k = max(1, k)
                else:
                    k = max(1, round(n * DELTA_NEW_FACT))
                counts[(name, pr.key)] = k
        new_rows = self._generation_round(counts, window, full=False, batch=batch)
        self.batches_made += 1
        out = {}
        for key, table in self.tables.items():
            rows = [list(table.rows[i]) for i in updated.get(key, [])] + [list(r) for r in new_rows.get(key, [])]
            idx = table.spec.column_names.index(table.spec.id_column)
            rows.sort(key=lambda r: _id_sort_key(r[idx]))
            out[key] = rows
        return out

    def _update(self, table: Table, window: Window, rng: Random) -> list[int]:
        """Change some existing rows in place; returns their indices."""
        spec = table.spec
        n = len(table.rows)
        if n == 0:
            return []
        rate = DELTA_UPDATE_DIM if spec.is_dimension else DELTA_UPDATE_FACT
        k = min(n, max(1, round(n * rate)))
        chosen = sorted(rng.sample(range(n), k))
        names = spec.column_names
        old_rows = [table.rows[i] for i in chosen]
        fixed = {c: [r[j] for r in old_rows] for j, c in enumerate(names)
                 if c in spec.natural_key or spec.columns[j].references or c in _FIXED_EXCLUDED[:2]}
        main = V.main_date_column(spec)
        # fresh candidate rows for the changed values (three tries per value before a forced mutation)
        ctx_args = dict(practice=table.practice, anchor=[table.anchor[i] for i in chosen],
                        ins=[table.ins[i] for i in chosen], upd_lo=window.date_from, hi=window.date_to,
                        loaded=window.loaded, staff=self._staff(table.practice))
        candidates = [V.build_rows(spec, V.Ctx(rng=rng, n=k, fixed=dict(fixed), **ctx_args)) for _ in range(3)]

        if spec.is_dimension:
            # NHI changes are left out: a new NHI is a rare merge event, not an attribute change
            tracked = [c for c in spec.core.tracked if not V.is_nhi_column(spec.column(c))]  # type: ignore[union-attr]
            pool = tracked or [c for c in names if self._mutable(spec, c, main)]
            preferred = [c for c in PREFERRED_DIM_CHANGES if c in pool]
        else:
            pool = [c for c in names if self._mutable(spec, c, main)]
            domain_cols = [c.column for c in spec.columns if c.domain and c.column in pool]
        fixed_cols = {"updated_at", "loaded_date_time"}
        for row_no, i in enumerate(chosen):
            row = list(table.rows[i])
            if pool:
                m = rng.randint(1, min(3, len(pool)))
                cols = rng.sample(pool, m)
                if spec.is_dimension and preferred and rng.random() < 0.7:
                    cols = [rng.choice(preferred)] + [c for c in cols[1:]]
                    cols = list(dict.fromkeys(cols))
                if not spec.is_dimension and domain_cols and rng.random() < 0.7:
                    d = rng.choice(domain_cols)
                    if d not in cols:
                        cols.append(d)
            else:
                cols = []
            changed = False
            for c in cols:
                j = names.index(c)
                col = spec.columns[j]
                if col.references:  # another existing member of the referenced extract
                    others = [v for v in self.ids(col.references, table.practice.key) if v != row[j]]
                    new = rng.choice(others) if others else row[j]
                else:
                    new = next((cand[row_no][j] for cand in candidates if cand[row_no][j] != row[j]), None)
                    if new is None:
                        new = V.mutate_value(spec, col, row[j], rng)
                changed |= new != row[j]
                row[j] = new
            for c in fixed_cols & set(names):
                j = names.index(c)
                if spec.columns[j].type is ContractType.TIMESTAMP_NZ:
                    row[j] = candidates[0][row_no][j] if c == "updated_at" else window.loaded
            if not changed and pool:  # every picked column happened to keep its value: force one change
                c = pool[0]
                j = names.index(c)
                row[j] = V.mutate_value(spec, spec.columns[j], row[j], rng)
            self._rederive(spec, row)
            table.rows[i] = tuple(row)
        if spec.id_column == "practice_id" and "practice_name" in names:
            table.practice.name = table.rows[0][names.index("practice_name")]
        return chosen

    @staticmethod
    def _mutable(spec: ExtractSpec, c: str, main: str | None) -> bool:
        col = spec.column(c)
        return not (
            c in spec.natural_key or col.references or c == main or c in _FIXED_EXCLUDED
            or c in ("inserted_at", "updated_at", "practice_location_id", "location_name", "practice",
                     "practice_name", "inserted_by", "inserted_by_id")
            or V.is_nhi_column(col) or c.startswith("field")
        )

    @staticmethod
    def _rederive(spec: ExtractSpec, row: list[str]) -> None:
        names = spec.column_names
        if {"first_name", "family_name", "full_name"} <= set(names):
            fi, fa, fu = names.index("first_name"), names.index("family_name"), names.index("full_name")
            if spec.columns[fu].type is ContractType.TEXT:
                row[fu] = f"{row[fi]} {row[fa]}".strip()

    # -- inspection --------------------------------------------------------------------------------
    def rows(self, extract: str, practice_key: tuple[int, int]) -> list[list[str]]:
        return [list(r) for r in self.tables[(extract, practice_key)].rows]

    def practice(self, practice_key: tuple[int, int]) -> V.PracticeInfo:
        for p in self.practices:
            if p.key == practice_key:
                return p
        raise KeyError(practice_key)


def load_specs(specs: Mapping[str, ExtractSpec] | None = None, extracts: Iterable[str] | None = None
               ) -> dict[str, ExtractSpec]:
    """The specs to generate: ``specs`` or the registry's, optionally limited to ``extracts`` (by name).

    Limiting keeps referenced extracts out of the output but references still point at ids that the
    omitted extracts would hold (the population generates them internally).
    """
    if specs is None:
        from contracts.registry import load_all

        specs = load_all()
    specs = dict(specs)
    if extracts is not None:
        wanted = {e.lower() for e in extracts}
        unknown = wanted - {n.lower() for n in specs} - {t.lower() for s in specs.values() for t in s.file_tokens}
        if unknown:
            raise KeyError(f"unknown extracts: {sorted(unknown)}")
    return specs


__all__ = ["Population", "Window", "Table", "reference_order", "parent_extract", "load_specs",
           "ROWS_PER_PATIENT", "CATALOGUES"]
