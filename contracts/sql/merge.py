"""Contract -> the set-based statements that merge stg into core (SCD2 dimensions, newest-wins facts).

Everything here is derived from the specs and built with psycopg.sql only. The statements are executed
by worker/pipeline/merge.py, in this order, inside one transaction that holds the MERGE advisory lock.

Temporary tables (created and dropped by each extract's merge, so several extracts share a transaction):
  merge_nhi(value, hash, valid, key_version)  the distinct NHI values in scope, hashed in Python (the
                                 key never reaches Postgres; key_version is the etl.nhi_key_versions
                                 version of the key); joined on the value exactly as staged.
  merge_affected(<nk>)           dimension keys whose versions are recomputed.
  merge_desired(...)             the complete desired SCD2 history of the affected keys.

"Counted" stg rows are those of files whose etl.load_run_files.status is 'staged' or 'merged'.

Dimension (SCD2), for each affected key, from ALL counted stg versions of that key:
  1. versions sharing a DateExtracted: keep the newest (date_to, row_number, file_hash);
  2. deletes (when enabled): if the newest full file of the key's practice is newer than the key's newest
     version, append a version with is_removed = true at the full file's DateExtracted (values and
     lineage of the last real version);
  3. consecutive versions with identical tracked attributes (IS NOT DISTINCT FROM, NHI by its hash,
     is_removed included) form one run; each run is one row: effective_from = DateExtracted of its first
     version, effective_to = next row's effective_from (NULL for the last), is_current = last row;
     untracked attributes and lineage come from the newest version of the run.
  Applied as: clear is_current where it moves; upsert on (nk, effective_from) only where something
  differs; re-point facts of affected keys; delete rows of affected keys that are not desired (this
  removes inferred rows once the real member has arrived).

Inferred members: a fact whose reference names a dimension key with no real row creates a row with
is_inferred = true, NULL attributes, effective_from = '-infinity', is_current = true. Its lineage is that
of the earliest counted fact row referencing it (ordered by date_extracted, date_to, row_number,
file_hash; kept as a running minimum across merges), so it is a function of the set of files too.

Facts: upsert on the natural key from the newest version in the files being merged; the update only
happens when the incoming version is newer than the stored one. Foreign keys: the dimension version
valid at the fact's main date (a DATE main date counts from NZ midnight), else the earliest version.
"""

from __future__ import annotations


from psycopg import sql

from contracts import naming
from contracts.model import ColumnSpec, ExtractSpec, FactSpec, PiiClass
from contracts.relations import Reference, references  # noqa: F401  (Reference: re-exported)
from contracts.schema import core_attribute_columns
from contracts.types import SOURCE_TIME_ZONE, ContractType

COUNTED_STATUSES = ("staged", "merged")
INFERRED_FROM = "-infinity"
LINEAGE = ("load_file_id", "row_number", "s3_version_id", "file_hash", "date_extracted", "date_to", "load_run_id")
# The ordering of versions (PRODUCT.md guarantee 4).
VERSION_ORDER = ("date_extracted", "date_to", "row_number", "file_hash")
# DateExtracted of a file as the provider writes it in the name (etl.config 'full_batches' entries).
BATCH_FORMAT = "YYMMDDHH24MI"

NHI_TABLE = sql.Identifier("merge_nhi")
AFFECTED_TABLE = sql.Identifier("merge_affected")
DESIRED_TABLE = sql.Identifier("merge_desired")

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


def _attr_select(spec: ExtractSpec, src: str) -> sql.Composable:
    """stg row `src` -> the core attribute columns (free text dropped, NHI -> hash + valid)."""
    parts: list[sql.Composable] = []
    for col in spec.columns:
        if col.pii is PiiClass.FREE_TEXT:
            continue
        if col.pii is PiiClass.NHI:
            n = _nhi_alias(col)
            parts.append(sql.SQL("{} AS {}").format(sql.Identifier(n, "hash"), sql.Identifier(naming.nhi_hash_column(col.column))))
            parts.append(sql.SQL("{} AS {}").format(sql.Identifier(n, "valid"), sql.Identifier(naming.nhi_valid_column(col.column))))
            parts.append(sql.SQL("{} AS {}").format(sql.Identifier(n, "key_version"), sql.Identifier(naming.nhi_key_version_column(col.column))))
            continue
        parts.append(sql.SQL("{} AS {}").format(sql.Identifier(src, col.column), sql.Identifier(col.column)))
    return sql.SQL(", ").join(parts)


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
    """(LEFT JOIN clause, select expression) resolving a fact's FK set-based: the target version whose
    validity window [effective_from, effective_to) holds `at` (windows of a key are contiguous), else the
    key's earliest version (looked up only for the rows the join left without a match)."""
    target = ref.target
    key = naming.surrogate_key(target.core.table)
    v = sql.Identifier(alias)
    match = sql.SQL(" AND ").join(
        sql.SQL("{}.{} = {}").format(v, sql.Identifier(t), sql.Identifier(source, f)) for t, f in ref.match
    )
    join = sql.SQL(
        "LEFT JOIN {dim} {v} ON {match} AND {v}.effective_from <= {at} "
        "AND ({v}.effective_to IS NULL OR {v}.effective_to > {at})"
    ).format(dim=core_table(target), v=v, match=match, at=at)
    earliest = sql.SQL("(SELECT d.{key} FROM {dim} d WHERE {cond} ORDER BY d.effective_from LIMIT 1)").format(
        key=sql.Identifier(key),
        dim=core_table(target),
        cond=sql.SQL(" AND ").join(
            sql.SQL("d.{} = {}").format(sql.Identifier(t), sql.Identifier(source, f)) for t, f in ref.match
        ),
    )
    return join, sql.SQL("COALESCE({}.{}, {})").format(v, sql.Identifier(key), earliest)


# -- NHI -----------------------------------------------------------------------------------------------
def nhi_temp_table() -> list[sql.Composable]:
    return [
        sql.SQL("DROP TABLE IF EXISTS {}").format(NHI_TABLE),
        sql.SQL("CREATE TEMP TABLE {} (value text PRIMARY KEY, hash text, valid boolean, key_version integer)").format(NHI_TABLE),
    ]


def nhi_copy() -> sql.Composable:
    return sql.SQL("COPY {} (value, hash, valid, key_version) FROM STDIN").format(NHI_TABLE)


def nhi_values_statement(spec: ExtractSpec) -> sql.Composable:
    """Distinct NHI values (as staged) in scope: for a dimension all counted versions of the affected
    keys, for a fact the rows of the files being merged (%(files)s)."""
    parts = []
    for col in nhi_columns(spec):
        if spec.is_dimension:
            parts.append(
                sql.SQL("SELECT s.{c} AS value FROM {stg} s JOIN {a} a ON {on} {counted} WHERE s.{c} IS NOT NULL").format(
                    c=sql.Identifier(col.column), stg=stg_table(spec), a=AFFECTED_TABLE,
                    on=_eq("a", "s", spec.natural_key), counted=_counted("f", sql.SQL("s.load_file_id")),
                )
            )
        else:
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
def dim_affected_statement(spec: ExtractSpec) -> list[sql.Composable]:
    """merge_affected := keys staged in the files being merged (counted files only), plus (deletes on) every real key of a
    practice whose full file is among them."""
    nk = spec.natural_key
    return _create_temp(AFFECTED_TABLE, sql.SQL(
        """SELECT DISTINCT {nk_s} FROM {stg} s {counted} WHERE s.load_file_id = ANY(%(files)s)
UNION
SELECT {nk_d} FROM {dim} d
WHERE %(deletes)s AND NOT d.is_inferred AND EXISTS (
    SELECT 1 FROM etl.load_run_files f
    WHERE f.file_id = ANY(%(files)s) AND f.practice_id = d.practice_id
      AND (f.per_org_id IS NULL OR f.per_org_id = d.per_org_id)
      AND to_char(f.date_extracted AT TIME ZONE {tz}, {fmt}) = ANY(%(full_batches)s::text[]))"""
    ).format(
        nk_s=_ids(nk, "s"), nk_d=_ids(nk, "d"), stg=stg_table(spec), dim=core_table(spec),
        counted=_counted("f", sql.SQL("s.load_file_id")),
        tz=_TZ, fmt=sql.Literal(BATCH_FORMAT),
    ), nk)


def _create_temp(name: sql.Identifier, query: sql.Composable, index: list[str]) -> list[sql.Composable]:
    return [
        sql.SQL("DROP TABLE IF EXISTS {}").format(name),
        sql.SQL("CREATE TEMP TABLE {} AS {}").format(name, query),
        sql.SQL("CREATE INDEX ON {} ({})").format(name, _ids(index)),
        sql.SQL("ANALYZE {}").format(name),
    ]


def dim_desired_statement(spec: ExtractSpec) -> list[sql.Composable]:
    """merge_desired := the complete SCD2 history of every affected key (module docstring, steps 1-3)."""
    nk = spec.natural_key
    attrs = core_attributes(spec)
    reserved = {"m_vfrom", "m_brk", "m_grp", "m_from", "m_rn"}
    if reserved & set(attrs):
        raise ValueError(f"{spec.extract}: column names clash with merge work columns")
    cols = [*attrs, "is_removed", *LINEAGE]
    tracked = [*_tracked_core(spec), "is_removed"]
    changed = sql.SQL(" OR ").join(
        sql.SQL("lag({c}) OVER w IS DISTINCT FROM {c}").format(c=sql.Identifier("allv", t)) for t in tracked
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
    SELECT allv.*, CASE WHEN lag(allv.m_vfrom) OVER w IS NULL OR {changed} THEN 1 ELSE 0 END AS m_brk
    FROM allv WINDOW w AS (PARTITION BY {part} ORDER BY allv.m_vfrom)
), g AS (
    SELECT c.*, sum(c.m_brk) OVER (PARTITION BY {part} ORDER BY c.m_vfrom ROWS UNBOUNDED PRECEDING) AS m_grp
    FROM c
), h AS (
    SELECT g.*, min(g.m_vfrom) OVER (PARTITION BY {part}, g.m_grp) AS m_from,
           row_number() OVER (PARTITION BY {part}, g.m_grp ORDER BY g.m_vfrom DESC) AS m_rn
    FROM g
)
SELECT {cols_h}, h.m_from AS effective_from,
       lead(h.m_from) OVER (PARTITION BY {part} ORDER BY h.m_from) AS effective_to,
       (lead(h.m_from) OVER (PARTITION BY {part} ORDER BY h.m_from) IS NULL) AS is_current
FROM h WHERE h.m_rn = 1"""
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
    return sql.SQL("DROP TABLE IF EXISTS {}, {}, {}").format(NHI_TABLE, AFFECTED_TABLE, DESIRED_TABLE)


# -- facts ---------------------------------------------------------------------------------------------
def fact_date_range_statement(spec: ExtractSpec) -> sql.Composable:
    """(first, last) NZ-local main date of the rows in the files being merged."""
    d = _main_local_date(spec, "s")
    return sql.SQL("SELECT min({d}), max({d}) FROM {stg} s WHERE s.load_file_id = ANY(%(files)s)").format(
        d=d, stg=stg_table(spec)
    )


def inferred_statements(spec: ExtractSpec, specs: dict[str, ExtractSpec]) -> list[tuple[str, sql.Composable]]:
    """Per target dimension: insert inferred members for referenced keys that have no real row.
    Each statement returns one row: (inserted)."""
    by_target: dict[str, list[Reference]] = {}
    for ref in references(spec, specs):
        by_target.setdefault(ref.target.extract, []).append(ref)
    out = []
    for target_name, refs in by_target.items():
        target = refs[0].target
        nk = target.natural_key
        sources = []
        for ref in refs:
            mapping = dict(ref.match)
            sources.append(
                sql.SQL("SELECT {keys}, {lineage} FROM {stg} s WHERE s.load_file_id = ANY(%(files)s) AND s.{col} IS NOT NULL").format(
                    keys=sql.SQL(", ").join(
                        sql.SQL("s.{} AS {}").format(sql.Identifier(mapping[k]), sql.Identifier(k)) for k in nk
                    ),
                    lineage=_ids(LINEAGE, "s"),
                    stg=stg_table(spec),
                    col=sql.Identifier(ref.column),
                )
            )
        statement = sql.SQL(
            """WITH ins AS (
    INSERT INTO {dim} AS d ({nk}, effective_from, effective_to, is_current, is_inferred, is_removed, {lineage})
    SELECT DISTINCT ON ({nk_r}) {nk_r}, {inf}::timestamptz, NULL, true, true, false, {lineage_r}
    FROM ({sources}) r
    WHERE NOT EXISTS (SELECT 1 FROM {dim} d2 WHERE {on} AND NOT d2.is_inferred)
    ORDER BY {nk_r}, {order_r}
    ON CONFLICT ({nk}, effective_from) DO UPDATE SET {sets}, merged_at = now()
    WHERE d.is_inferred AND ({order_ex}) < ({order_d})
    RETURNING (xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted) FROM ins"""
        ).format(
            dim=core_table(target),
            nk=_ids(nk),
            lineage=_ids(LINEAGE),
            nk_r=_ids(nk, "r"),
            inf=sql.Literal(INFERRED_FROM),
            lineage_r=_ids(LINEAGE, "r"),
            sources=sql.SQL(" UNION ALL ").join(sources),
            on=_eq("d2", "r", nk),
            order_r=_ids(VERSION_ORDER, "r"),
            sets=sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in LINEAGE),
            order_ex=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in VERSION_ORDER),
            order_d=_ids(VERSION_ORDER, "d"),
        )
        out.append((target_name, statement))
    return out


def fact_upsert_statement(spec: ExtractSpec, specs: dict[str, ExtractSpec]) -> sql.Composable:
    """Newest version per key of the files being merged; an older version never overwrites a newer one.
    Returns one row: (inserted, updated)."""
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
    return sql.SQL(
        """WITH up AS (
    INSERT INTO {fact} AS t ({cols})
    SELECT {select}
    FROM (
        SELECT DISTINCT ON ({nk_s}) s.* FROM {stg} s WHERE s.load_file_id = ANY(%(files)s)
        ORDER BY {nk_s}, s.date_extracted DESC, s.date_to DESC, s.row_number DESC, s.file_hash DESC
    ) s
    {nhi_joins}
    {ref_joins}
    ON CONFLICT ({nk}) DO UPDATE SET {sets}, merged_at = now()
    WHERE ({order_ex}) > ({order_t})
    RETURNING (xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM up"""
    ).format(
        fact=core_table(spec),
        cols=_ids(cols),
        select=sql.SQL(", ").join(select),
        nk_s=_ids(nk, "s"),
        stg=stg_table(spec),
        nhi_joins=_nhi_joins(spec, "s"),
        ref_joins=sql.SQL(" ").join(join for join, _ in joins),
        nk=_ids(nk),
        sets=sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in settable),
        order_ex=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in VERSION_ORDER),
        order_t=_ids(VERSION_ORDER, "t"),
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
def ensure_dim_date_statement() -> sql.Composable:
    """core.dim_date rows for every day in [%(first)s, %(last)s] (ISO week, NZ financial year)."""
    return sql.SQL(
        """INSERT INTO core.dim_date (date_key, date, year, month, day, iso_year, iso_week, weekday,
                           weekday_name, nz_financial_year, nz_financial_quarter)
SELECT to_char(d, 'YYYYMMDD')::int, d::date,
       extract(year FROM d)::smallint, extract(month FROM d)::smallint, extract(day FROM d)::smallint,
       extract(isoyear FROM d)::smallint, extract(week FROM d)::smallint, extract(isodow FROM d)::smallint,
       to_char(d, 'FMDay'),
       (extract(year FROM d) + CASE WHEN extract(month FROM d) >= 7 THEN 1 ELSE 0 END)::smallint,
       (mod(extract(month FROM d)::int + 5, 12) / 3 + 1)::smallint
FROM generate_series(%(first)s::date::timestamp, %(last)s::date::timestamp, interval '1 day') AS g(d)
ON CONFLICT (date_key) DO NOTHING"""
    )
