"""Contract -> the set-based statements that merge stg into core (SCD2 dimensions, newest-wins facts).

Everything here is derived from the specs and built with psycopg.sql only. The statements are executed
by worker/pipeline/merge.py, in this order, inside one transaction that holds the MERGE advisory lock(s).

Temporary tables (created and dropped by each extract's merge, so several extracts share a transaction):
  merge_nhi(value, hash, valid, key_version)  the distinct NHI values in scope, hashed in Python (the
                                 key never reaches Postgres; key_version is the etl.nhi_key_versions
                                 version of the key); joined on the value exactly as staged.
  merge_incoming(<nk>, ...)      the rows of the files being merged (dimensions), each with its key's
                                 current row and whether the fast path may take it (m_slow).
  merge_affected(<nk>)           dimension keys whose versions are recomputed (the slow path).
  merge_desired(...)             the complete desired SCD2 history of the affected keys.
  merge_fast(...)                incoming rows of the fast path that change something.

"Counted" stg rows are those of files whose etl.load_run_files.status is 'staged' or 'merged'.

Dimension (SCD2), for each key, from ALL counted stg versions of that key (the definition):
  1. versions sharing a DateExtracted: keep the newest (date_to, row_number, file_hash);
  2. deletes (when enabled): if the newest full file of the key's practice is newer than the key's newest
     version, append a version with is_removed = true at the full file's DateExtracted (values and
     lineage of the last real version);
  3. consecutive versions with identical tracked attributes (IS NOT DISTINCT FROM, NHI by its hash,
     is_removed included) form one run; each run is one row: effective_from = DateExtracted of its first
     version, effective_to = next row's effective_from (NULL for the last), is_current = last row;
     untracked attributes come from the newest version of the run, and lineage from the version that
     gave the row its values: the earliest of the run's newest versions that are identical in every
     attribute but DELIVERY_COLUMNS (so an unchanged re-delivery changes nothing, and is not written;
     the row's LoadedDateTime is that of the version that gave its values, like its lineage).
  Two ways to get there, chosen per key:
  - fast path (the nightly case): the key's incoming version is its only one in the files being merged
    and no other stg version of the key is as new (one probe of the stg index on (<nk>, date_extracted)),
    its current row is real and not removed, deletes are off and no other file of the extract waits
    staged outside the merge. Then the history only grows at its end: identical -> nothing; untracked
    change -> the current row updated in place; tracked change -> the current row closed at the new
    DateExtracted, a new current row, and the facts of the key dated from then re-pointed; a new key ->
    one row. Cost follows the rows that changed, not the history.
  - slow path (late or repeated versions, inferred or removed members, deletes): the affected keys'
    history is recomputed from stg. Applied as: clear is_current where it moves; upsert on (nk,
    effective_from) only where something differs; re-point facts of affected keys; count the facts
    that still point at a version about to go (orphans: must be zero); delete rows of affected keys
    that are not desired (this removes inferred rows once the real member has arrived).

Inferred members: a fact whose reference names a dimension key with no real row creates a row with
is_inferred = true, NULL attributes, effective_from = '-infinity', is_current = true. Its lineage is that
of the earliest counted fact row referencing it (ordered by date_extracted, date_to, row_number,
file_hash; kept as a running minimum across merges), so it is a function of the set of files too.

Facts: upsert on the natural key from the newest version in the files being merged; the update only
happens when the incoming version is newer than the stored one. Foreign keys: the dimension version
valid at the fact's main date (a DATE main date counts from NZ midnight), else the earliest version,
found by a hash join to the key's current version first. Facts carry no FOREIGN KEY constraints:
every reference is resolved or an inferred member created before the upsert, and the upsert counts,
per relation, the rows it wrote whose reference is unresolved (a dimension key read by the same
statement names a row by construction) or whose calendar day or lineage file names no row
(`relations`, `_orphan_counts`); the counts go to etl.dq_results and a non-zero count fails the merge.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from psycopg import sql

from contracts import naming
from contracts.model import ColumnSpec, ExtractSpec, FactSpec, PiiClass
from contracts.relations import Reference, references  # noqa: F401  (Reference: re-exported)
from contracts.schema import core_attribute_columns
from contracts.types import SOURCE_TIME_ZONE, ContractType

COUNTED_STATUSES = ("staged", "merged")
INFERRED_FROM = "-infinity"
LINEAGE = ("load_file_id", "row_number", "s3_version_id", "file_hash", "date_extracted", "date_to", "load_run_id")
# The provider's per-delivery column (indici/README.md: added to every extract, it moves with each
# delivery): a dimension version that differs from the previous one in these only is a re-delivery, not
# a change, so it rewrites nothing; the row keeps them, like its lineage, from the version that gave it
# its values.
DELIVERY_COLUMNS = ("loaded_date_time",)
# The ordering of versions (PRODUCT.md guarantee 4).
VERSION_ORDER = ("date_extracted", "date_to", "row_number", "file_hash")
# DateExtracted of a file as the provider writes it in the name (etl.config 'full_batches' entries).
BATCH_FORMAT = "YYMMDDHH24MI"

NHI_TABLE = sql.Identifier("merge_nhi")
AFFECTED_TABLE = sql.Identifier("merge_affected")
DESIRED_TABLE = sql.Identifier("merge_desired")
INCOMING_TABLE = sql.Identifier("merge_incoming")
FAST_TABLE = sql.Identifier("merge_fast")
HELD_TABLE = sql.Identifier("merge_held")  # a bulk fact merge: the natural keys the fact held before it
REFS_TABLE = sql.Identifier("merge_refs")  # a fact merge: its files' referenced keys, one row per (key, file)
NEWEST_TABLE = sql.Identifier("merge_newest")  # a fact merge of several files: the newest version's row per key

_TZ = sql.Literal(SOURCE_TIME_ZONE)


# -- helpers -------------------------------------------------------------------------------------------
def _ids(names, alias: str | None = None) -> sql.Composable:
    if alias is None:
        return sql.SQL(", ").join(sql.Identifier(n) for n in names)
    return sql.SQL(", ").join(sql.Identifier(alias, n) for n in names)


def _eq(left: str, right: str, names, right_names=None) -> sql.Composable:
    right_names = right_names or names
    return sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(left, a), sql.Identifier(right, b))
        for a, b in zip(names, right_names)
    )


def _counted(alias: str, file_col: sql.Composable) -> sql.Composable:
    return sql.SQL("JOIN etl.load_run_files {f} ON {f}.file_id = {col} AND {f}.status IN ({st})").format(
        f=sql.Identifier(alias), col=file_col, st=sql.SQL(", ").join(sql.Literal(s) for s in COUNTED_STATUSES)
    )


def core_table(spec: ExtractSpec) -> sql.Identifier:
    return sql.Identifier(naming.CORE, spec.core.table)


def stg_table(spec: ExtractSpec) -> sql.Identifier:
    return sql.Identifier(naming.STG, naming.stg_table(spec))


def nhi_columns(spec: ExtractSpec) -> list[ColumnSpec]:
    return [c for c in spec.columns if c.pii is PiiClass.NHI]


def core_attributes(spec: ExtractSpec) -> list[str]:
    """Core attribute column names, in table order (natural key included)."""
    return [c.name for c in core_attribute_columns(spec)]


def _nhi_alias(col: ColumnSpec) -> str:
    return f"nhi_{col.column}"


def _attr_exprs(spec: ExtractSpec, src: str) -> list[tuple[str, sql.Composable]]:
    """stg row `src` -> (core attribute column, expression): free text dropped, NHI -> hash, valid and
    key version (from the merge_nhi joins of `_nhi_joins`)."""
    out: list[tuple[str, sql.Composable]] = []
    for col in spec.columns:
        if col.pii is PiiClass.FREE_TEXT:
            continue
        if col.pii is PiiClass.NHI:
            n = _nhi_alias(col)
            out.append((naming.nhi_hash_column(col.column), sql.Identifier(n, "hash")))
            out.append((naming.nhi_valid_column(col.column), sql.Identifier(n, "valid")))
            out.append((naming.nhi_key_version_column(col.column), sql.Identifier(n, "key_version")))
            continue
        out.append((col.column, sql.Identifier(src, col.column)))
    return out


def _attr_select(spec: ExtractSpec, src: str) -> sql.Composable:
    """stg row `src` -> the core attribute columns (free text dropped, NHI -> hash + valid)."""
    return sql.SQL(", ").join(sql.SQL("{} AS {}").format(e, sql.Identifier(c)) for c, e in _attr_exprs(spec, src))


def _nhi_joins(spec: ExtractSpec, src: str) -> sql.Composable:
    return sql.SQL(" ").join(
        sql.SQL("LEFT JOIN {t} {n} ON {n}.value = {v}").format(
            t=NHI_TABLE, n=sql.Identifier(_nhi_alias(c)), v=sql.Identifier(src, c.column)
        )
        for c in nhi_columns(spec)
    )


def _tracked_core(spec: ExtractSpec) -> list[str]:
    """Tracked columns as core columns: an NHI is compared by its hash; free text is not in core."""
    out = []
    for name in spec.core.tracked:
        col = spec.column(name)
        if col.pii is PiiClass.FREE_TEXT:
            continue
        out.append(naming.nhi_hash_column(name) if col.pii is PiiClass.NHI else name)
    return out


def _main_ts(spec: ExtractSpec, alias: str) -> sql.Composable:
    """The fact's main date as timestamptz (a DATE counts from NZ midnight)."""
    main = spec.column(spec.core.main_date)
    ident = sql.Identifier(alias, main.column)
    if main.type is ContractType.DATE:
        return sql.SQL("({}::timestamp AT TIME ZONE {})").format(ident, _TZ)
    return ident


def _main_local_date(spec: ExtractSpec, alias: str) -> sql.Composable:
    main = spec.column(spec.core.main_date)
    ident = sql.Identifier(alias, main.column)
    if main.type is ContractType.DATE:
        return ident
    return sql.SQL("({} AT TIME ZONE {})::date").format(ident, _TZ)


def _full_files() -> sql.Composable:
    """CTE body: the newest counted full file per (practice_id, per_org_id) of the extract."""
    return sql.SQL(
        """SELECT DISTINCT ON (f.practice_id, f.per_org_id) f.file_id, f.practice_id, f.per_org_id, f.date_extracted
        FROM etl.load_run_files f
        WHERE %(deletes)s AND f.extract = %(extract)s AND f.status IN ({st})
          AND to_char(f.date_extracted AT TIME ZONE {tz}, {fmt}) = ANY(%(full_batches)s::text[])
        ORDER BY f.practice_id, f.per_org_id, f.date_extracted DESC, f.date_to DESC, f.file_hash DESC"""
    ).format(
        st=sql.SQL(", ").join(sql.Literal(s) for s in COUNTED_STATUSES), tz=_TZ, fmt=sql.Literal(BATCH_FORMAT)
    )


def _full_for(alias: str) -> sql.Composable:
    """LATERAL subquery: the newest full file of row `alias`'s practice (from CTE `fulls`)."""
    return sql.SQL(
        "SELECT fu.file_id, fu.date_extracted FROM fulls fu WHERE fu.practice_id = {a}.practice_id "
        "AND (fu.per_org_id IS NULL OR fu.per_org_id = {a}.per_org_id) ORDER BY fu.date_extracted DESC LIMIT 1"
    ).format(a=sql.Identifier(alias))




def referencing(dim: ExtractSpec, specs: dict[str, ExtractSpec]) -> list[tuple[ExtractSpec, Reference]]:
    """Every (fact, reference) that points at dimension `dim`."""
    return [
        (fact, ref)
        for fact in specs.values()
        if not fact.is_dimension
        for ref in references(fact, specs)
        if ref.target.extract == dim.extract
    ]


def _version_lookup(ref: Reference, source: str, at: sql.Composable, desired_only: bool) -> sql.Composable:
    """Scalar subquery: surrogate key of the target version valid at `at`, else the earliest version."""
    target = ref.target
    key = sql.Identifier("d", naming.surrogate_key(target.core.table))
    cond = sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier("d", t), sql.Identifier(source, f)) for t, f in ref.match
    )
    if desired_only:
        from_ = sql.SQL("{desired} x JOIN {dim} d ON {on} AND d.effective_from = x.effective_from").format(
            desired=DESIRED_TABLE, dim=core_table(target), on=_eq("d", "x", target.natural_key)
        )
    else:
        from_ = sql.SQL("{} d").format(core_table(target))
    return sql.SQL(
        "(SELECT {key} FROM {from_} WHERE {cond} ORDER BY (d.effective_from <= {at}) DESC, "
        "CASE WHEN d.effective_from <= {at} THEN d.effective_from END DESC NULLS LAST, d.effective_from LIMIT 1)"
    ).format(key=key, from_=from_, cond=cond, at=at)


def _version_join(ref: Reference, alias: str, source: str, at: sql.Composable) -> tuple[sql.Composable, sql.Composable]:
    """(LEFT JOIN clause, select expression) resolving a fact's FK set-based, with a fast path for the
    current version: one hash join on the business key to the key's current row (the partial unique
    index on current rows: at most one per key); that row is the answer whenever the fact's main date
    is on or after its effective_from, which is the common case (and always so for an inferred member,
    valid from -infinity). Only the other rows look the version up by an index probe: the version
    whose effective_from is the latest on or before `at` (a key's windows are contiguous), else the
    key's earliest version. A key without a current row has no row at all: NULL (the orphan count then
    fails the merge, since inferred members are created first)."""
    target = ref.target
    key = naming.surrogate_key(target.core.table)
    v = sql.Identifier(alias)
    match = sql.SQL(" AND ").join(
        sql.SQL("{}.{} = {}").format(v, sql.Identifier(t), sql.Identifier(source, f)) for t, f in ref.match
    )
    join = sql.SQL("LEFT JOIN {dim} {v} ON {match} AND {v}.is_current").format(dim=core_table(target), v=v, match=match)
    cond = sql.SQL(" AND ").join(
        sql.SQL("d.{} = {}").format(sql.Identifier(t), sql.Identifier(source, f)) for t, f in ref.match
    )
    expression = sql.SQL(
        "CASE WHEN {v}.{key} IS NULL THEN NULL WHEN {v}.effective_from <= {at} THEN {v}.{key} ELSE COALESCE("
        "(SELECT d.{key} FROM {dim} d WHERE {cond} AND d.effective_from <= {at} ORDER BY d.effective_from DESC LIMIT 1), "
        "(SELECT d.{key} FROM {dim} d WHERE {cond} ORDER BY d.effective_from LIMIT 1)) END"
    ).format(v=v, key=sql.Identifier(key), at=at, dim=core_table(target), cond=cond)
    return join, expression


# -- orphan checks -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Relation:
    """A core column that must name an existing row elsewhere (what a FOREIGN KEY used to enforce).

    fact: the core table (a fact, or a dimension for its lineage); column: its FK column; target: the referenced table; target_key: its key column;
    source: the fact column whose non-NULL value requires the FK to be resolved (NULL: always required)."""

    fact: str
    column: str
    target: str
    target_key: str
    source: str | None

    @property
    def name(self) -> str:
        return f"core.{self.fact}.{self.column} -> {self.target}.{self.target_key}"


def relations(spec: ExtractSpec, specs: dict[str, ExtractSpec]) -> list[Relation]:
    """Every relation of a fact's core table: the dimension references, the main date, the lineage file."""
    table = spec.core.table
    out = [
        Relation(table, r.fk, f"core.{r.target.core.table}", naming.surrogate_key(r.target.core.table), r.column)
        for r in references(spec, specs)
    ]
    out.append(Relation(table, "date_key", "core.dim_date", "date_key", None))
    out.append(lineage_relation(spec))
    return out


def lineage_relation(spec: ExtractSpec) -> Relation:
    """A core row's lineage file (PRODUCT.md guarantee 5): its load_file_id names an etl.load_run_files
    row. Facts count it among their relations; a dimension's rows are counted where the merge builds
    them (dim_lineage_statement, the inferred members' statement)."""
    return Relation(spec.core.table, "load_file_id", "etl.load_run_files", "file_id", None)


def dim_lineage_statement(table: sql.Identifier) -> sql.Composable:
    """The rows a dimension merge is about to write (temp table `table`: merge_desired or merge_fast)
    whose lineage names no etl.load_run_files row: one hashed subplan over the ledger, not a trigger
    probe per row (what the dimensions' FOREIGN KEY cost: 1.75 s per 243k inferred patients)."""
    return sql.SQL(
        "SELECT count(*) FROM {} x WHERE x.load_file_id IS NULL "
        "OR NOT (x.load_file_id IN (SELECT f.file_id FROM etl.load_run_files f))"
    ).format(table)


def _orphan_counts(spec: ExtractSpec, specs: dict[str, ExtractSpec], rows: str) -> sql.Composable:
    """Per relation, the rows of CTE `rows` (the rows just written by fact_upsert_statement) that break
    it; lineage files are those being merged (%(files)s).

    A dimension reference (a relation with a source column) is broken only when it is unresolved: its
    key was read from the dimension's own row by the version join of the same statement, so under that
    statement's snapshot it names an existing row by construction. Testing that again cost a hashed
    subplan over the whole dimension per reference, for a count that cannot be non-zero (1M
    Appointments, old and new counts interleaved, medians of 4: the upsert step 14.8 -> 13.5 s on a
    first load, 40.4 -> 37.1 s on a reload). The calendar key is computed from the main date, not read
    from core.dim_date, so its existence is checked: a hashed subplan over the calendar (small)."""
    parts = []
    r = sql.Identifier(rows)
    for rel in relations(spec, specs):
        col = sql.SQL("{}.{}").format(r, sql.Identifier(rel.column))
        if rel.target == "etl.load_run_files":
            parts.append(sql.SQL("count(*) FILTER (WHERE {c} IS NULL OR NOT ({c} = ANY(%(files)s)))").format(c=col))
            continue
        if rel.source is not None:
            source = sql.SQL("{}.{}").format(r, sql.Identifier(rel.source))
            parts.append(sql.SQL("count(*) FILTER (WHERE {s} IS NOT NULL AND {c} IS NULL)").format(s=source, c=col))
            continue
        schema, table = rel.target.split(".")
        parts.append(sql.SQL("count(*) FILTER (WHERE {c} IS NULL OR NOT ({c} IN (SELECT {k} FROM {t})))").format(
            c=col, k=sql.Identifier(rel.target_key), t=sql.Identifier(schema, table)))
    return sql.SQL(", ").join(parts)


def dim_orphans_statement(dim: ExtractSpec, specs: dict[str, ExtractSpec]) -> tuple[list[Relation], sql.Composable | None]:
    """Before obsolete versions of affected keys are deleted: per referencing fact relation, the facts
    that still point at one of them (each would become an orphan). One row of counts; the FK columns are
    indexed, so this reads only the facts of the versions being removed."""
    pairs = referencing(dim, specs)
    if not pairs:
        return [], None
    key = naming.surrogate_key(dim.core.table)
    nk = dim.natural_key
    obsolete = sql.SQL(
        "SELECT d.{key} FROM {dim} d JOIN {a} a ON {on_a} WHERE NOT EXISTS "
        "(SELECT 1 FROM {desired} x WHERE {on_x} AND x.effective_from = d.effective_from)"
    ).format(key=sql.Identifier(key), dim=core_table(dim), a=AFFECTED_TABLE, on_a=_eq("a", "d", nk),
             desired=DESIRED_TABLE, on_x=_eq("x", "d", nk))
    rels, counts = [], []
    for fact, ref in pairs:
        rels.append(Relation(fact.core.table, ref.fk, f"core.{dim.core.table}", key, ref.column))
        counts.append(sql.SQL("(SELECT count(*) FROM {fact} t WHERE t.{fk} IN (SELECT o.{key} FROM obsolete o))").format(
            fact=core_table(fact), fk=sql.Identifier(ref.fk), key=sql.Identifier(key)))
    return rels, sql.SQL("WITH obsolete AS MATERIALIZED ({}) SELECT {}").format(obsolete, sql.SQL(", ").join(counts))


# -- NHI -----------------------------------------------------------------------------------------------
def nhi_temp_table() -> list[sql.Composable]:
    return [
        sql.SQL("DROP TABLE IF EXISTS {}").format(NHI_TABLE),
        sql.SQL("CREATE TEMP TABLE {} (value text PRIMARY KEY, hash text, valid boolean, key_version integer)").format(NHI_TABLE),
    ]


def nhi_copy() -> sql.Composable:
    return sql.SQL("COPY {} (value, hash, valid, key_version) FROM STDIN").format(NHI_TABLE)


def nhi_values_statement(spec: ExtractSpec) -> sql.Composable:
    """Distinct NHI values (as staged) in scope: the rows of the files being merged (%(files)s), and for
    a dimension all counted versions of the affected keys (the slow path recomputes them)."""
    parts = []
    for col in nhi_columns(spec):
        if spec.is_dimension:
            parts.append(
                sql.SQL("SELECT s.{c} AS value FROM {stg} s JOIN {a} a ON {on} {counted} WHERE s.{c} IS NOT NULL").format(
                    c=sql.Identifier(col.column), stg=stg_table(spec), a=AFFECTED_TABLE,
                    on=_eq("a", "s", spec.natural_key), counted=_counted("f", sql.SQL("s.load_file_id")),
                )
            )
        parts.append(
            sql.SQL("SELECT s.{c} AS value FROM {stg} s WHERE s.load_file_id = ANY(%(files)s) AND s.{c} IS NOT NULL").format(
                c=sql.Identifier(col.column), stg=stg_table(spec)
            )
        )
    return sql.SQL("SELECT DISTINCT value FROM ({}) v").format(sql.SQL(" UNION ALL ").join(parts))


def nhi_invalid_statement(spec: ExtractSpec) -> sql.Composable:
    """Rows of the files being merged whose NHI fails the format or check character."""
    parts = [
        sql.SQL("(SELECT count(*) FROM {stg} s JOIN {t} n ON n.value = s.{c} WHERE s.load_file_id = ANY(%(files)s) AND n.valid = false)").format(
            stg=stg_table(spec), t=NHI_TABLE, c=sql.Identifier(col.column)
        )
        for col in nhi_columns(spec)
    ]
    return sql.SQL("SELECT {}").format(sql.SQL(" + ").join(parts))


# -- dimensions ----------------------------------------------------------------------------------------
def dim_incoming_statement(spec: ExtractSpec, several_files: bool) -> list[sql.Composable]:
    """merge_incoming := the rows of the files being merged (counted files only) with their key's current
    row (m_key) and m_slow: whether the key must take the slow path (module docstring). %(all_slow)s
    sends every key there (deletes on, or another file of the extract waits staged). The probe for a
    version as new elsewhere is a LATERAL LIMIT 1 on the stg index (<nk>, date_extracted): one index
    descent per incoming key, however many versions the key has."""
    nk = spec.natural_key
    key = naming.surrogate_key(spec.core.table)
    repeated = (sql.SQL(" OR count(*) OVER (PARTITION BY {}) > 1").format(_ids(nk, "s")) if several_files
                else sql.SQL(""))
    return _create_temp(INCOMING_TABLE, sql.SQL(
        """SELECT {nk_s}, s.load_file_id, s.row_number, s.date_extracted, c.{key} AS m_key,
       (%(all_slow)s OR c.is_inferred OR c.is_removed OR newer.hit IS NOT NULL{repeated}) IS TRUE AS m_slow
FROM {stg} s
{counted}
LEFT JOIN {dim} c ON {on_c} AND c.is_current
LEFT JOIN LATERAL (
    SELECT 1 AS hit FROM {stg} o
    WHERE {on_o} AND o.date_extracted >= s.date_extracted AND o.load_file_id <> s.load_file_id LIMIT 1
) newer ON true
WHERE s.load_file_id = ANY(%(files)s)"""
    ).format(
        nk_s=_ids(nk, "s"), key=sql.Identifier(key), repeated=repeated, stg=stg_table(spec),
        counted=_counted("f", sql.SQL("s.load_file_id")), dim=core_table(spec), on_c=_eq("c", "s", nk),
        on_o=_eq("o", "s", nk),
    ), nk)


def dim_affected_statement(spec: ExtractSpec) -> list[sql.Composable]:
    """merge_affected := the incoming keys of the slow path, plus (deletes on) every real key of a
    practice whose full file is among the files being merged."""
    nk = spec.natural_key
    return _create_temp(AFFECTED_TABLE, sql.SQL(
        """SELECT DISTINCT {nk_i} FROM {incoming} i WHERE i.m_slow
UNION
SELECT {nk_d} FROM {dim} d
WHERE %(deletes)s AND NOT d.is_inferred AND EXISTS (
    SELECT 1 FROM etl.load_run_files f
    WHERE f.file_id = ANY(%(files)s) AND f.practice_id = d.practice_id
      AND (f.per_org_id IS NULL OR f.per_org_id = d.per_org_id)
      AND to_char(f.date_extracted AT TIME ZONE {tz}, {fmt}) = ANY(%(full_batches)s::text[]))"""
    ).format(
        nk_i=_ids(nk, "i"), incoming=INCOMING_TABLE, nk_d=_ids(nk, "d"), dim=core_table(spec),
        tz=_TZ, fmt=sql.Literal(BATCH_FORMAT),
    ), nk)


def dim_fast_statement(spec: ExtractSpec) -> list[sql.Composable]:
    """merge_fast := the fast path's incoming rows that change something: a new key (m_key NULL), or a
    row differing from its key's current row in any attribute (m_changed: in a tracked one)."""
    nk = spec.natural_key
    key = naming.surrogate_key(spec.core.table)
    exprs = dict(_attr_exprs(spec, "s"))
    tracked = _tracked_core(spec)
    compared = [c for c in exprs if c not in nk and c not in DELIVERY_COLUMNS]
    return _create_temp(FAST_TABLE, sql.SQL(
        """SELECT {attr_select}, {lineage_s}, i.m_key,
       (i.m_key IS NOT NULL AND ({tracked_c}) IS DISTINCT FROM ({tracked_s})) AS m_changed
FROM {incoming} i
JOIN {stg} s ON s.load_file_id = i.load_file_id AND s.row_number = i.row_number AND s.load_file_id = ANY(%(files)s)
{nhi_joins}
LEFT JOIN {dim} c ON c.{key} = i.m_key
WHERE NOT i.m_slow AND (i.m_key IS NULL OR ({all_c}) IS DISTINCT FROM ({all_s}))"""
    ).format(
        attr_select=_attr_select(spec, "s"), lineage_s=_ids(LINEAGE, "s"), incoming=INCOMING_TABLE,
        stg=stg_table(spec), nhi_joins=_nhi_joins(spec, "s"), dim=core_table(spec), key=sql.Identifier(key),
        tracked_c=sql.SQL(", ").join([_ids(tracked, "c"), sql.SQL("NULL::text")]),
        tracked_s=sql.SQL(", ").join([sql.SQL(", ").join(exprs[t] for t in tracked), sql.SQL("NULL::text")]),
        all_c=sql.SQL(", ").join([_ids(compared, "c"), sql.SQL("NULL::text")]),
        all_s=sql.SQL(", ").join([sql.SQL(", ").join(exprs[t] for t in compared), sql.SQL("NULL::text")]),
    ), ["m_key"])


def dim_fast_apply_statements(spec: ExtractSpec) -> dict[str, sql.Composable]:
    """The fast path's writes, in order: 'update' (untracked change: the current row in place), 'close'
    (tracked change: the current row ends at the new DateExtracted), 'insert' (the new current rows)."""
    nk = spec.natural_key
    key = sql.Identifier(naming.surrogate_key(spec.core.table))
    attrs = [c for c in core_attributes(spec) if c not in nk]
    insert_cols = [*core_attributes(spec), *LINEAGE]
    return {
        "update": sql.SQL(
            "UPDATE {dim} d SET {sets}, merged_at = now() FROM {fast} f WHERE d.{key} = f.m_key AND NOT f.m_changed"
        ).format(dim=core_table(spec), fast=FAST_TABLE, key=key,
                 sets=sql.SQL(", ").join(sql.SQL("{0} = f.{0}").format(sql.Identifier(c)) for c in [*attrs, *LINEAGE])),
        "close": sql.SQL(
            "UPDATE {dim} d SET effective_to = f.date_extracted, is_current = false, merged_at = now() "
            "FROM {fast} f WHERE d.{key} = f.m_key AND f.m_changed"
        ).format(dim=core_table(spec), fast=FAST_TABLE, key=key),
        "insert": sql.SQL(
            "INSERT INTO {dim} ({cols}, is_removed, effective_from, effective_to, is_current, is_inferred) "
            "SELECT {cols_f}, false, f.date_extracted, NULL, true, false FROM {fast} f "
            "WHERE f.m_key IS NULL OR f.m_changed"
        ).format(dim=core_table(spec), cols=_ids(insert_cols), cols_f=_ids(insert_cols, "f"), fast=FAST_TABLE),
    }


def dim_fast_repoint_statement(dim: ExtractSpec, fact: ExtractSpec, ref: Reference) -> sql.Composable:
    """Facts of a key whose tracked attributes changed on the fast path, dated on or after the new
    version's DateExtracted, move from the closed version to the new current one (the FK index finds
    them by the closed version)."""
    key = sql.Identifier(naming.surrogate_key(dim.core.table))
    on_n = sql.SQL(" AND ").join(
        sql.SQL("n.{} = f.{}").format(sql.Identifier(t), sql.Identifier(t)) for t, _ in ref.match
    )
    return sql.SQL(
        """UPDATE {fact} t SET {fk} = n.{key}
FROM {fast} f JOIN {dim} n ON {on_n} AND n.is_current
WHERE f.m_changed AND t.{fk} = f.m_key AND {at} >= f.date_extracted"""
    ).format(fact=core_table(fact), fk=sql.Identifier(ref.fk), key=key, fast=FAST_TABLE, dim=core_table(dim),
             on_n=on_n, at=_main_ts(fact, "t"))


def _create_temp(name: sql.Identifier, query: sql.Composable, index: list[str]) -> list[sql.Composable]:
    return [
        sql.SQL("DROP TABLE IF EXISTS {}").format(name),
        sql.SQL("CREATE TEMP TABLE {} AS {}").format(name, query),
        sql.SQL("CREATE INDEX ON {} ({})").format(name, _ids(index)),
        # Statistics of the columns joined on only: ANALYZE of every column of a wide table (the desired
        # history, the fast path's rows: 200 columns for Patients) took seconds.
        sql.SQL("ANALYZE {} ({})").format(name, _ids(index)),
    ]


def dim_desired_statement(spec: ExtractSpec) -> list[sql.Composable]:
    """merge_desired := the complete SCD2 history of every affected key (module docstring, steps 1-3)."""
    nk = spec.natural_key
    attrs = core_attributes(spec)
    reserved = {"m_vfrom", "m_brk", "m_brk2", "m_grp", "m_sub", "m_lastsub", "m_from", "m_rn"}
    if reserved & set(attrs):
        raise ValueError(f"{spec.extract}: column names clash with merge work columns")
    cols = [*attrs, "is_removed", *LINEAGE]
    tracked = [*_tracked_core(spec), "is_removed"]
    changed = sql.SQL(" OR ").join(
        sql.SQL("lag({c}) OVER w IS DISTINCT FROM {c}").format(c=sql.Identifier("allv", t)) for t in tracked
    )
    # Any attribute (tracked or not): where a run of identical versions starts.
    differs = sql.SQL(" OR ").join(
        sql.SQL("lag({c}) OVER w IS DISTINCT FROM {c}").format(c=sql.Identifier("allv", t))
        for t in [*attrs, "is_removed"] if t not in nk and t not in DELIVERY_COLUMNS
    )
    part = _ids(nk)
    return _create_temp(DESIRED_TABLE, sql.SQL(
        """WITH v AS (
    SELECT DISTINCT ON ({nk_s}, s.date_extracted)
           {attr_select}, false AS is_removed, {lineage_s}, s.date_extracted AS m_vfrom
    FROM {stg} s
    JOIN {a} a ON {on_a}
    {counted}
    {nhi_joins}
    ORDER BY {nk_s}, s.date_extracted, s.date_to DESC, s.row_number DESC, s.file_hash DESC
), fulls AS (
    {fulls}
), lastv AS (
    SELECT DISTINCT ON ({nk_v}) v.* FROM v ORDER BY {nk_v}, v.m_vfrom DESC
), removal AS (
    SELECT {attrs_l}, true AS is_removed, {lineage_l}, fu.date_extracted AS m_vfrom
    FROM lastv JOIN LATERAL ({full_for}) fu ON true
    WHERE lastv.m_vfrom < fu.date_extracted
), allv AS (
    SELECT {cols} , m_vfrom FROM v
    UNION ALL
    SELECT {cols} , m_vfrom FROM removal
), c AS (
    SELECT allv.*, CASE WHEN lag(allv.m_vfrom) OVER w IS NULL OR {changed} THEN 1 ELSE 0 END AS m_brk,
           CASE WHEN lag(allv.m_vfrom) OVER w IS NULL OR {differs} THEN 1 ELSE 0 END AS m_brk2
    FROM allv WINDOW w AS (PARTITION BY {part} ORDER BY allv.m_vfrom)
), g AS (
    SELECT c.*, sum(c.m_brk) OVER o AS m_grp, sum(c.m_brk2) OVER o AS m_sub
    FROM c WINDOW o AS (PARTITION BY {part} ORDER BY c.m_vfrom ROWS UNBOUNDED PRECEDING)
), h AS (
    SELECT g.*, min(g.m_vfrom) OVER (PARTITION BY {part}, g.m_grp) AS m_from,
           max(g.m_sub) OVER (PARTITION BY {part}, g.m_grp) AS m_lastsub,
           row_number() OVER (PARTITION BY {part}, g.m_sub ORDER BY g.m_vfrom) AS m_rn
    FROM g
)
SELECT {cols_h}, h.m_from AS effective_from,
       lead(h.m_from) OVER (PARTITION BY {part} ORDER BY h.m_from) AS effective_to,
       (lead(h.m_from) OVER (PARTITION BY {part} ORDER BY h.m_from) IS NULL) AS is_current
FROM h WHERE h.m_sub = h.m_lastsub AND h.m_rn = 1"""
    ).format(
        nk_s=_ids(nk, "s"),
        nk_v=_ids(nk, "v"),
        attr_select=_attr_select(spec, "s"),
        lineage_s=_ids(LINEAGE, "s"),
        stg=stg_table(spec),
        a=AFFECTED_TABLE,
        on_a=_eq("a", "s", nk),
        counted=_counted("f", sql.SQL("s.load_file_id")),
        nhi_joins=_nhi_joins(spec, "s"),
        fulls=_full_files(),
        attrs_l=_ids(attrs, "lastv"),
        lineage_l=_ids(LINEAGE, "lastv"),
        full_for=_full_for("lastv"),
        cols=_ids(cols),
        changed=changed,
        differs=differs,
        part=part,
        cols_h=_ids(cols, "h"),
    ), [*nk, "effective_from"])


def dim_clear_current_statement(spec: ExtractSpec) -> sql.Composable:
    """Clear is_current on rows of affected keys that will not be the desired current row, so that the
    upsert never meets the partial unique index on current rows with two current versions."""
    nk = spec.natural_key
    return sql.SQL(
        """UPDATE {dim} d SET is_current = false
FROM {a} a
WHERE d.is_current AND {on_a}
  AND NOT EXISTS (SELECT 1 FROM {desired} x WHERE {on_x} AND x.effective_from = d.effective_from AND x.is_current)"""
    ).format(dim=core_table(spec), a=AFFECTED_TABLE, desired=DESIRED_TABLE, on_a=_eq("a", "d", nk), on_x=_eq("x", "d", nk))


def dim_upsert_statement(spec: ExtractSpec) -> sql.Composable:
    """Insert the desired rows; update an existing version only where something differs.
    Returns one row: (inserted, updated)."""
    nk = spec.natural_key
    cols = [*core_attributes(spec), "is_removed", *LINEAGE, "effective_from", "effective_to", "is_current"]
    settable = [c for c in cols if c not in nk and c != "effective_from"] + ["is_inferred"]
    return sql.SQL(
        """WITH up AS (
    INSERT INTO {dim} AS d ({cols}, is_inferred)
    SELECT {cols}, false FROM {desired}
    ON CONFLICT ({nk}, effective_from) DO UPDATE SET {sets}, merged_at = now()
    WHERE ({old}) IS DISTINCT FROM ({new})
    RETURNING (xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM up"""
    ).format(
        dim=core_table(spec),
        cols=_ids(cols),
        desired=DESIRED_TABLE,
        nk=_ids(nk),
        sets=sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in settable),
        old=_ids(settable, "d"),
        new=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in settable),
    )


def dim_repoint_statement(dim: ExtractSpec, fact: ExtractSpec, ref: Reference) -> sql.Composable:
    """Point the facts that reference an affected key at the desired version valid at their main date."""
    lookup = _version_lookup(ref, "t", _main_ts(fact, "t"), desired_only=True)
    on = sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier("a", tcol), sql.Identifier("t", fcol)) for tcol, fcol in ref.match
    )
    return sql.SQL(
        """UPDATE {fact} t SET {fk} = {lookup}
FROM {a} a
WHERE {on} AND t.{fk} IS DISTINCT FROM {lookup}"""
    ).format(fact=core_table(fact), fk=sql.Identifier(ref.fk), lookup=lookup, a=AFFECTED_TABLE, on=on)


def dim_delete_obsolete_statement(spec: ExtractSpec) -> sql.Composable:
    """Remove versions of affected keys that the desired history no longer has (inferred rows too)."""
    nk = spec.natural_key
    return sql.SQL(
        """DELETE FROM {dim} d USING {a} a
WHERE {on_a} AND NOT EXISTS (SELECT 1 FROM {desired} x WHERE {on_x} AND x.effective_from = d.effective_from)"""
    ).format(dim=core_table(spec), a=AFFECTED_TABLE, desired=DESIRED_TABLE, on_a=_eq("a", "d", nk), on_x=_eq("x", "d", nk))


def drop_temp_statement() -> sql.Composable:
    return sql.SQL("DROP TABLE IF EXISTS {}, {}, {}, {}, {}, {}, {}, {}").format(
        NHI_TABLE, AFFECTED_TABLE, DESIRED_TABLE, INCOMING_TABLE, FAST_TABLE, HELD_TABLE, REFS_TABLE, NEWEST_TABLE)


# -- facts ---------------------------------------------------------------------------------------------
def _ref_key_columns(ref: Reference) -> tuple[str, ...]:
    """The fact's columns that name a reference's target key (in the target's natural-key order)."""
    return tuple(fact_col for _, fact_col in ref.match)


def _ref_grouping(refs: list[Reference]) -> tuple[list[str], dict[tuple[str, ...], int]]:
    """The fact columns of every reference's key (first-seen order), and for each distinct key column set
    the value GROUPING() over those columns gives its rows (a bit set for each column not in the set)."""
    columns: list[str] = []
    for ref in refs:
        columns += [c for c in _ref_key_columns(ref) if c not in columns]
    masks: dict[tuple[str, ...], int] = {}
    for ref in refs:
        key = _ref_key_columns(ref)
        masks.setdefault(key, sum(1 << (len(columns) - 1 - i) for i, c in enumerate(columns) if c not in key))
    return columns, masks


def inferred_refs_statements(spec: ExtractSpec, specs: dict[str, ExtractSpec]) -> list[sql.Composable]:
    """merge_refs := the referenced keys of the files being merged, one row per reference key column set,
    key and file, with the file's earliest row holding it (min(row_number)); `g` tells the sets apart
    (GROUPING()). One scan of stg and one hash aggregate with a table per set, instead of a scan and an
    aggregate per target dimension: the three of 1M Appointments (patients, providers, the practice: 1
    key, still 1M rows hashed) took 4.9 s, the one 2.3 s. A key column that is NULL in a row (an empty
    reference) gives a group with a NULL key, which inferred_statements leaves out. Empty when the fact
    references nothing."""
    refs = references(spec, specs)
    if not refs:
        return []
    columns, masks = _ref_grouping(refs)
    sets = sql.SQL(", ").join(
        sql.SQL("({}, s.load_file_id)").format(_ids(key, "s")) for key in masks
    )
    return [
        sql.SQL("DROP TABLE IF EXISTS {}").format(REFS_TABLE),
        sql.SQL(
            "CREATE TEMP TABLE {refs} AS SELECT GROUPING({cols_s}) AS g, {cols_s}, s.load_file_id, "
            "min(s.row_number) AS row_number FROM {stg} s WHERE s.load_file_id = ANY(%(files)s) "
            "GROUP BY GROUPING SETS ({sets})"
        ).format(refs=REFS_TABLE, cols_s=_ids(columns, "s"), stg=stg_table(spec), sets=sets),
        sql.SQL("ANALYZE {}").format(REFS_TABLE),
    ]


def inferred_statements(spec: ExtractSpec, specs: dict[str, ExtractSpec]) -> list[tuple[str, sql.Composable]]:
    """Per target dimension (in name order, so that parallel fact merges insert shared members in one
    order): insert inferred members for referenced keys that have no real row. Rows of keys whose
    inferred member already has lineage at least as early are dropped before the sort (the running
    minimum cannot move). Each statement returns one row: (inserted, rows written whose lineage is not
    one of the files merged: must be 0, the dimension's lineage relation). They read merge_refs
    (inferred_refs_statements), which the merge creates first.

    The referencing rows come reduced to one per (key, file) (merge_refs): a file's lineage is the same on
    all its rows except the row number, so its earliest row for a key is min(row_number), found by a
    hash aggregate over the key and the file id alone (narrow: hashing the file's text lineage on every
    row cost more than the aggregate); the file's other lineage is then joined from one stg row per
    file. A target referenced through several columns takes the earliest of their rows per (key, file).
    The earliest-first sort orders one row per key and file instead of every referencing row (a
    1M-row file referencing 243k patients: 243k rows sorted, not 900k; 1 practice: 1 row, not 1M)."""
    refs_all = references(spec, specs)
    _, masks = _ref_grouping(refs_all)
    by_target: dict[str, list[Reference]] = {}
    for ref in refs_all:
        by_target.setdefault(ref.target.extract, []).append(ref)
    per_file = [c for c in LINEAGE if c not in ("load_file_id", "row_number")]
    file_lineage = sql.SQL(
        "SELECT l.* FROM unnest(%(files)s::bigint[]) AS fl(load_file_id) CROSS JOIN LATERAL "
        "(SELECT s.load_file_id, {cols} FROM {stg} s WHERE s.load_file_id = fl.load_file_id LIMIT 1) l"
    ).format(cols=_ids(per_file, "s"), stg=stg_table(spec))
    out = []
    for target_name, refs in sorted(by_target.items()):
        target = refs[0].target
        nk = target.natural_key
        sources = []
        for ref in refs:
            mapping = dict(ref.match)
            sources.append(
                sql.SQL("SELECT {keys}, r.load_file_id, r.row_number FROM {refs} r "
                        "WHERE r.g = {mask} AND r.{col} IS NOT NULL").format(
                    keys=sql.SQL(", ").join(
                        sql.SQL("r.{} AS {}").format(sql.Identifier(mapping[k]), sql.Identifier(k)) for k in nk
                    ),
                    refs=REFS_TABLE,
                    mask=sql.Literal(masks[_ref_key_columns(ref)]),
                    col=sql.Identifier(ref.column),
                )
            )
        if len(sources) == 1:  # merge_refs holds a (key, file) once per column set
            keyed = sql.SQL("({}) k").format(sources[0])
        else:
            keyed = sql.SQL(
                "(SELECT {nk_u}, u.load_file_id, min(u.row_number) AS row_number FROM ({sources}) u "
                "GROUP BY {nk_u}, u.load_file_id) k"
            ).format(nk_u=_ids(nk, "u"), sources=sql.SQL(" UNION ALL ").join(sources))
        statement = sql.SQL(
            """WITH ins AS (
    INSERT INTO {dim} AS d ({nk}, effective_from, effective_to, is_current, is_inferred, is_removed, {lineage})
    SELECT DISTINCT ON ({nk_r}) {nk_r}, {inf}::timestamptz, NULL, true, true, false, {lineage_r}
    FROM (
        SELECT {nk_k}, k.load_file_id, k.row_number, {per_file_f}
        FROM {keyed}
        JOIN ({file_lineage}) f ON f.load_file_id = k.load_file_id
    ) r
    WHERE NOT EXISTS (SELECT 1 FROM {dim} d2 WHERE {on} AND (NOT d2.is_inferred OR ({order_d2}) <= ({order_r})))
    ORDER BY {nk_r}, {order_r}
    ON CONFLICT ({nk}, effective_from) DO UPDATE SET {sets}, merged_at = now()
    WHERE d.is_inferred AND ({order_ex}) < ({order_d})
    RETURNING (xmax = 0) AS inserted, load_file_id
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT (load_file_id = ANY(%(files)s))) FROM ins"""
        ).format(
            dim=core_table(target),
            nk=_ids(nk),
            lineage=_ids(LINEAGE),
            nk_r=_ids(nk, "r"),
            inf=sql.Literal(INFERRED_FROM),
            lineage_r=_ids(LINEAGE, "r"),
            nk_k=_ids(nk, "k"),
            per_file_f=_ids(per_file, "f"),
            keyed=keyed,
            file_lineage=file_lineage,
            on=_eq("d2", "r", nk),
            order_r=_ids(VERSION_ORDER, "r"),
            order_d2=_ids(VERSION_ORDER, "d2"),
            sets=sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in LINEAGE),
            order_ex=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in VERSION_ORDER),
            order_d=_ids(VERSION_ORDER, "d"),
        )
        out.append((target_name, statement))
    return out


UPSERT, EXISTING_KEYS, NEW_KEYS, INSERT_ONLY = "upsert", "existing", "new", "insert"


def held_keys_statements(spec: ExtractSpec) -> list[sql.Composable]:
    """merge_held: the natural keys the fact holds before a bulk merge (fewer than the batch, so the
    copy costs what the batch costs), with a primary key and statistics. The bulk statements join to it
    rather than to the fact they write: a scan of the fact inside the INSERT that fills it would read
    every page the statement has added so far, once per row."""
    nk = spec.natural_key
    return [
        sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {}").format(HELD_TABLE, _ids(nk), core_table(spec)),
        sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(HELD_TABLE, _ids(nk)),
        sql.SQL("ANALYZE {}").format(HELD_TABLE),
    ]


def fact_newest_statements(spec: ExtractSpec) -> list[sql.Composable]:
    """merge_newest := per natural key of the files being merged, the (load_file_id, row_number) of its
    newest version (VERSION_ORDER), with statistics. A table, not a subquery: joined back to stg as a
    DISTINCT ON subquery, the planner could not tell how many rows it keeps (8 files of 100k
    Appointments: 4,000 estimated, 800,000 kept) and resolved the references by 1.6M index probes
    instead of hash joins (the fact upsert step 26.0 s; with the table, hash joins: 16.8 s, one run each). Without
    stg's statistics the planner still misjudges the join to stg: a bulk load also turns nested loops off
    (worker/pipeline/merge.py _merge_fact)."""
    nk = spec.natural_key
    return [
        sql.SQL("DROP TABLE IF EXISTS {}").format(NEWEST_TABLE),
        sql.SQL(
            "CREATE TEMP TABLE {newest} AS SELECT DISTINCT ON ({nk_w}) w.load_file_id, w.row_number FROM {stg} w "
            "WHERE w.load_file_id = ANY(%(files)s) ORDER BY {nk_w}, {newest_first}"
        ).format(newest=NEWEST_TABLE, nk_w=_ids(nk, "w"), stg=stg_table(spec),
                 newest_first=sql.SQL(", ").join(sql.SQL("w.{} DESC").format(sql.Identifier(c)) for c in VERSION_ORDER)),
        sql.SQL("ANALYZE {}").format(NEWEST_TABLE),
    ]


def fact_upsert_statement(spec: ExtractSpec, specs: dict[str, ExtractSpec], dedupe: bool = True,
                          keys: str = UPSERT) -> sql.Composable:
    """Newest version per key of the files being merged; an older version never overwrites a newer one.
    Returns one row: (inserted, updated, then per relation of `relations(spec)` its orphan count among
    the rows written).

    `dedupe`: several files may hold the same key, so the newest version per key is chosen first
    (merge_newest, fact_newest_statements: a sort of the narrow (key, order, row id) tuples only), joined
    back to the rows by stg's (load_file_id, row_number). Without it (one file: stg holds a key once per
    file) there is no sort at all.

    `keys`: UPSERT, every row through INSERT .. ON CONFLICT (a nightly batch into a larger fact). A bulk
    load (the batch larger than the fact) writes the same rows without a conflict check per row: into
    an empty fact, INSERT_ONLY, a plain INSERT (no speculative insertion: 1M new Appointments 6 s
    faster); into a smaller fact, EXISTING_KEYS (the upsert, for the keys of merge_held) then NEW_KEYS
    (a plain INSERT of the others). Both run under the extract's merge lock, so together they write
    exactly what UPSERT writes; a key that appeared in between would fail the plain INSERT on the unique
    constraint, never be written twice."""
    assert isinstance(spec.core, FactSpec)
    nk = spec.natural_key
    attrs = core_attributes(spec)
    refs = references(spec, specs)
    at = _main_ts(spec, "s")
    main = spec.column(spec.core.main_date)
    if main.type is ContractType.DATE:
        date_key = sql.SQL("to_char({}, 'YYYYMMDD')::int").format(sql.Identifier("s", main.column))
    else:
        date_key = sql.SQL("to_char({} AT TIME ZONE {}, 'YYYYMMDD')::int").format(sql.Identifier("s", main.column), _TZ)
    cols = [*attrs, *(r.fk for r in refs), "date_key", *LINEAGE]
    joins = [_version_join(r, f"v{i}", "s", at) for i, r in enumerate(refs)]
    select = [
        _attr_select(spec, "s"),
        *(sql.SQL("{} AS {}").format(expr, sql.Identifier(r.fk)) for r, (_, expr) in zip(refs, joins)),
        sql.SQL("{} AS date_key").format(date_key),
        _ids(LINEAGE, "s"),
    ]
    settable = [c for c in cols if c not in nk]
    if dedupe:
        source = sql.SQL(
            # No filter on s beside the join: w holds rows of the merged files only, and s's primary key
            # then tells the planner the join keeps w's (exact) row count, with or without stg's statistics.
            "SELECT s.* FROM {newest} w JOIN {stg} s ON s.load_file_id = w.load_file_id AND s.row_number = w.row_number"
        ).format(stg=stg_table(spec), newest=NEWEST_TABLE)
    else:
        source = sql.SQL("SELECT s.* FROM {stg} s WHERE s.load_file_id = ANY(%(files)s)").format(stg=stg_table(spec))
    returned = sorted({*(r.column for r in refs), *(r.fk for r in refs), "date_key", "load_file_id"})
    held = sql.SQL("EXISTS (SELECT 1 FROM {held} h WHERE {on})").format(held=HELD_TABLE, on=_eq("h", "s", nk))
    upsert = sql.SQL("ON CONFLICT ({nk}) DO UPDATE SET {sets}, merged_at = now()\n    WHERE ({order_ex}) > ({order_t})")
    where, conflict = {
        UPSERT: (sql.SQL(""), upsert),
        EXISTING_KEYS: (sql.SQL("WHERE {}").format(held), upsert),
        NEW_KEYS: (sql.SQL("WHERE NOT {}").format(held), sql.SQL("")),
        INSERT_ONLY: (sql.SQL(""), sql.SQL("")),
    }[keys]
    return sql.SQL(
        """WITH up AS (
    INSERT INTO {fact} AS t ({cols})
    SELECT {select}
    FROM ({source}) s
    {nhi_joins}
    {ref_joins}
    {where}
    {conflict}
    RETURNING (xmax = 0) AS inserted, {returned}
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted), {orphans} FROM up"""
    ).format(
        fact=core_table(spec),
        cols=_ids(cols),
        select=sql.SQL(", ").join(select),
        source=source,
        nhi_joins=_nhi_joins(spec, "s"),
        ref_joins=sql.SQL(" ").join(join for join, _ in joins),
        where=where,
        conflict=conflict.format(
            nk=_ids(nk),
            sets=sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in settable),
            order_ex=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in VERSION_ORDER),
            order_t=_ids(VERSION_ORDER, "t"),
        ),
        returned=_ids(returned, "t"),
        orphans=_orphan_counts(spec, specs, "up"),
    )


def fact_removal_statement(spec: ExtractSpec) -> sql.Composable:
    """Deletes (enabled per extract): a fact of a practice touched by the files being merged is removed
    iff the newest counted full file of its practice lacks its key and its stored version is older than
    that file. Recomputed, so it is a function of the set of files. Returns the number of rows changed."""
    nk = spec.natural_key
    return sql.SQL(
        """WITH fulls AS (
    {fulls}
), x AS (
    SELECT {nk_t},
           (fu.file_id IS NOT NULL AND t.date_extracted < fu.date_extracted
            AND NOT EXISTS (SELECT 1 FROM {stg} s WHERE s.load_file_id = fu.file_id AND {on_s})) AS rm,
           fu.date_extracted AS full_at
    FROM {fact} t
    LEFT JOIN LATERAL ({full_for}) fu ON true
    WHERE t.practice_id IN (SELECT f.practice_id FROM etl.load_run_files f WHERE f.file_id = ANY(%(files)s))
), y AS (
    SELECT {nk_x}, x.rm, CASE WHEN x.rm THEN x.full_at END AS removed_at FROM x
), upd AS (
    UPDATE {fact} t SET is_removed = y.rm, removed_at = y.removed_at
    FROM y WHERE {on_y} AND (t.is_removed, t.removed_at) IS DISTINCT FROM (y.rm, y.removed_at)
    RETURNING 1
)
SELECT count(*) FROM upd"""
    ).format(
        fulls=_full_files(),
        nk_t=_ids(nk, "t"),
        stg=stg_table(spec),
        on_s=_eq("s", "t", nk),
        fact=core_table(spec),
        full_for=_full_for("t"),
        nk_x=_ids(nk, "x"),
        on_y=_eq("t", "y", nk),
    )


# -- dim_date ------------------------------------------------------------------------------------------
# core.dim_date is one continuous calendar over the plausible dates seen: every day from the earliest to
# the latest plausible main date ever merged (so it is a function of the set of dates, whatever the
# order of the batches), plus a row for each implausible date seen (a fact's date_key always names a
# row) without filling the centuries between.
CALENDAR_FROM = date(1900, 1, 2)  # 1900-01-01 is the source's "no date" (NULL in stg)
CALENDAR_TO = date(2099, 12, 31)


def fact_date_range_statement(spec: ExtractSpec) -> sql.Composable:
    """(first, last) plausible NZ-local main date of the rows in the files being merged, and the
    distinct implausible ones (an array, NULL when none).

    A timestamp's NZ date never goes back as time goes on (the DST changes are at 2 and 3 am), so the
    first and last dates are those of the earliest and latest instants, and "its date is plausible" is
    "it falls between NZ midnight of the first plausible day and NZ midnight after the last": one zone
    conversion for each of the two bounds and of the implausible rows, not three for every row (1M
    Appointments: 3.1 s -> 1.0 s)."""
    main = spec.column(spec.core.main_date)
    stg = stg_table(spec)
    column = sql.Identifier("s", main.column)
    if main.type is ContractType.DATE:
        d = sql.Identifier("x", "d")
        plausible = sql.SQL("{d} BETWEEN {lo} AND {hi}").format(d=d, lo=sql.Literal(CALENDAR_FROM),
                                                                 hi=sql.Literal(CALENDAR_TO))
        return sql.SQL(
            "SELECT min(x.d) FILTER (WHERE {p}), max(x.d) FILTER (WHERE {p}), "
            "array_agg(DISTINCT x.d) FILTER (WHERE NOT ({p})) "
            "FROM (SELECT {col} AS d FROM {stg} s WHERE s.load_file_id = ANY(%(files)s)) x"
        ).format(p=plausible, col=column, stg=stg)
    plausible = sql.SQL("x.t >= b.lo AND x.t < b.hi")
    return sql.SQL(
        "SELECT (min(x.t) FILTER (WHERE {p}) AT TIME ZONE {tz})::date, "
        "(max(x.t) FILTER (WHERE {p}) AT TIME ZONE {tz})::date, "
        "array_agg(DISTINCT (x.t AT TIME ZONE {tz})::date) FILTER (WHERE NOT ({p})) "
        "FROM (SELECT {col} AS t FROM {stg} s WHERE s.load_file_id = ANY(%(files)s)) x, "
        "(SELECT ({lo}::date::timestamp AT TIME ZONE {tz}) AS lo, "
        "(({hi}::date + 1)::timestamp AT TIME ZONE {tz}) AS hi) b"
    ).format(p=plausible, tz=_TZ, col=column, stg=stg, lo=sql.Literal(CALENDAR_FROM), hi=sql.Literal(CALENDAR_TO))


def calendar_bounds_statement() -> sql.Composable:
    """(first, last) day of the continuous calendar core.dim_date holds today."""
    return sql.SQL("SELECT min(date), max(date) FROM core.dim_date WHERE date BETWEEN {} AND {}").format(
        sql.Literal(CALENDAR_FROM), sql.Literal(CALENDAR_TO))


_DIM_DATE_ROW = """to_char(d, 'YYYYMMDD')::int, d::date,
       extract(year FROM d)::smallint, extract(month FROM d)::smallint, extract(day FROM d)::smallint,
       extract(isoyear FROM d)::smallint, extract(week FROM d)::smallint, extract(isodow FROM d)::smallint,
       to_char(d, 'FMDay'),
       (extract(year FROM d) + CASE WHEN extract(month FROM d) >= 7 THEN 1 ELSE 0 END)::smallint,
       (mod(extract(month FROM d)::int + 5, 12) / 3 + 1)::smallint"""
_DIM_DATE_COLUMNS = """core.dim_date (date_key, date, year, month, day, iso_year, iso_week, weekday,
                           weekday_name, nz_financial_year, nz_financial_quarter)"""


def ensure_dim_date_statement() -> sql.Composable:
    """core.dim_date rows for every day in [%(first)s, %(last)s] (ISO week, NZ financial year)."""
    return sql.SQL(
        "INSERT INTO " + _DIM_DATE_COLUMNS + "\nSELECT " + _DIM_DATE_ROW + """
FROM generate_series(%(first)s::date::timestamp, %(last)s::date::timestamp, interval '1 day') AS g(d)
ON CONFLICT (date_key) DO NOTHING"""
    )


def ensure_dates_statement() -> sql.Composable:
    """core.dim_date rows for the single days of %(dates)s (implausible dates seen; no range filled)."""
    return sql.SQL(
        "INSERT INTO " + _DIM_DATE_COLUMNS + "\nSELECT " + _DIM_DATE_ROW + """
FROM unnest(%(dates)s::date[]) AS g(day), LATERAL (SELECT g.day::timestamp AS d) t
ON CONFLICT (date_key) DO NOTHING"""
    )


# -- bulk loads ----------------------------------------------------------------------------------------
# A batch at least as large as the fact it goes into (a first night, a backfill of history) is written
# faster without the fact's reference-key indexes: each row costs a random insertion into every index
# (1M Appointments: 13 s for the three), while building them afterwards sorts once (3.2 s for the same
# three). The natural-key unique constraint (the upsert's arbiter) and the primary key stay. DROP INDEX
# is transactional: a merge that fails or is rolled back keeps the indexes. The merge runs as the
# writer role, which does not own the facts, so the DDL is in a SECURITY DEFINER function of the owner
# whose body is generated here from the schema the migrations are made from: it takes a fact's name and
# runs only these statements, never DDL the caller passes.
LOOKUP_INDEX_FUNCTION = ("etl", "set_fact_lookup_indexes")


def bulk_row_probe_statement(spec: ExtractSpec) -> sql.Composable:
    """How many rows the fact holds, counted up to %(limit)s only (the cost follows the batch, not the
    history): one row, (n)."""
    return sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} LIMIT %(limit)s) x").format(core_table(spec))


def fact_lookup_indexes(spec: ExtractSpec) -> list[tuple[sql.Composable, sql.Composable]]:
    """(DROP IF EXISTS, CREATE IF NOT EXISTS) of each non-unique index of the fact, compiled by
    SQLAlchemy from contracts/schema.py, so a rebuilt index is the one the migration made."""
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateIndex, DropIndex

    from contracts.schema import metadata

    table = metadata().tables[f"{naming.CORE}.{spec.core.table}"]
    dialect = postgresql.dialect()
    out = []
    for index in sorted(table.indexes, key=lambda i: str(i.name)):
        if index.unique:
            continue
        drop = str(DropIndex(index, if_exists=True).compile(dialect=dialect)).strip()
        create = str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect)).strip()
        out.append((sql.SQL(drop), sql.SQL(create)))
    return out


def lookup_index_function_statements(specs: dict[str, ExtractSpec], owner: str, writer: str) -> list[sql.Composable]:
    """etl.set_fact_lookup_indexes(fact text, present boolean) -> the number of indexes acted on:
    drops (present = false) or builds again (true) the reference-key indexes of core.<fact>. Owned by
    the owner role, executable by the writer only."""
    fn = sql.Identifier(*LOOKUP_INDEX_FUNCTION)
    branches = []
    for spec in sorted((s for s in specs.values() if isinstance(s.core, FactSpec)), key=lambda s: s.core.table):
        pairs = fact_lookup_indexes(spec)
        branches.append(sql.SQL(
            "IF fact = {name} THEN\n    IF present THEN\n      {creates}\n    ELSE\n      {drops}\n    END IF;\n"
            "    RETURN {n};\n  END IF;"
        ).format(
            name=sql.Literal(spec.core.table),
            creates=sql.SQL("\n      ").join(sql.Composed([c, sql.SQL(";")]) for _, c in pairs) if pairs else sql.SQL("NULL;"),
            drops=sql.SQL("\n      ").join(sql.Composed([d, sql.SQL(";")]) for d, _ in pairs) if pairs else sql.SQL("NULL;"),
            n=sql.Literal(len(pairs)),
        ))
    body = sql.SQL("\n  ").join(branches)
    return [
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {fn}(fact text, present boolean) RETURNS integer LANGUAGE plpgsql "
            "SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$\nBEGIN\n  {body}\n"
            "  RAISE EXCEPTION 'not a fact of the contracts: %', fact;\nEND\n$fn$"
        ).format(fn=fn, body=body),
        sql.SQL("ALTER FUNCTION {}(text, boolean) OWNER TO {}").format(fn, sql.Identifier(owner)),
        sql.SQL("REVOKE ALL ON FUNCTION {}(text, boolean) FROM PUBLIC").format(fn),
        sql.SQL("GRANT EXECUTE ON FUNCTION {}(text, boolean) TO {}").format(fn, sql.Identifier(writer)),
        sql.SQL("COMMENT ON FUNCTION {}(text, boolean) IS {}").format(
            fn, sql.Literal("Drops (false) or builds (true) a fact's reference-key indexes around a bulk merge "
                            "(generated from the contracts: contracts/sql/merge.py)")),
    ]
