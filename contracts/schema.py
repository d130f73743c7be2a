"""Contracts -> SQLAlchemy MetaData for the four zones (raw, stg, etl, core). Alembic's target.

Nothing here is hand-listed per extract: every table is derived from the specs, so a new column in a
spec becomes a new column in raw, stg and core with one `alembic revision --autogenerate`.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    Date,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP

from contracts import naming
from contracts.model import Coarsening, ExtractSpec, FactSpec, PiiClass, coarsened_column
from contracts.registry import load_all
from contracts.relations import references
from contracts.types import rule_for

TZ = TIMESTAMP(timezone=True)

# Lifecycle of a file in etl.load_run_files and of a run in etl.load_runs: the values of the enums of
# worker/pipeline/states.py (re-exported by worker/pipeline/lifecycle.py, which owns the transitions).
FILE_STATUSES = ("pending", "landed", "staged", "merged", "failed", "skipped", "duplicate", "superseded")
RUN_STATUSES = ("running", "succeeded", "partial", "failed")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _now() -> text:
    return text("now()")


def _in(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{v}'" for v in values)  # constants of this module, not user input
    return f"{column} IN ({quoted})"


def _lineage_columns() -> list[Column]:
    """Lineage every raw row carries (PRODUCT.md guarantee 1)."""
    return [
        Column("s3_bucket", Text, nullable=False),
        Column("s3_key", Text, nullable=False),
        Column("s3_version_id", Text, nullable=False),
        Column("file_hash", Text, nullable=False, comment="SHA-256 (hex) of the object's bytes"),
        Column("date_extracted", TZ, nullable=False, comment="DateExtracted of the file name"),
        Column("extract_type", Text, nullable=False, comment="Extract type token as in the name"),
        Column("file_per_org_id", BigInteger, comment="PerOrgID from the file name (NULL if ambiguous)"),
        Column("file_practice_id", BigInteger, comment="PracticeID from the file name"),
        Column("load_run_id", BigInteger, nullable=False),
        Column("landed_at", TZ, nullable=False, server_default=_now()),
    ]


def _etl_tables(metadata: MetaData) -> None:
    Table(
        "load_runs",
        metadata,
        Column("load_run_id", BigInteger, Identity(), primary_key=True),
        Column("kind", Text, nullable=False, comment="nightly | backfill | reprocess | demo"),
        Column("status", Text, nullable=False, server_default="running"),
        Column("params", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
        Column("summary", JSONB),
        Column("error", Text),
        Column("started_at", TZ, nullable=False, server_default=_now()),
        Column("finished_at", TZ),
        Column("request_key", Text, unique=True,
               comment="Who asked, once: e.g. nightly:<NZ date> (one nightly run per date, whatever beat sends)"),
        Column("active_key", Text, comment="The selection: two running runs of one selection are one run"),
        Column("lease_expires_at", TZ,
               comment="Renewed by each step; a running run past it has lost its driver (the reconciler acts)"),
        CheckConstraint(_in("status", RUN_STATUSES), name="status"),
        Index("uq_load_runs_running_active_key", "active_key", unique=True,
              postgresql_where=text("status = 'running'")),
        schema=naming.ETL,
    )
    Table(
        "load_run_files",
        metadata,
        Column("file_id", BigInteger, Identity(), primary_key=True),
        Column("load_run_id", BigInteger, ForeignKey("etl.load_runs.load_run_id"), nullable=False),
        Column("s3_bucket", Text, nullable=False),
        Column("s3_key", Text, nullable=False),
        Column("s3_version_id", Text, nullable=False),
        Column("s3_etag", Text),
        Column("s3_size", BigInteger),
        Column("s3_last_modified", TZ),
        Column("file_hash", Text, comment="SHA-256 hex of the bytes; set when landed"),
        Column("extract", Text, nullable=False, comment="Contract name, e.g. Appointments"),
        Column("extract_type", Text, nullable=False, comment="Token as written in the name"),
        Column("per_org_id", BigInteger),
        Column("practice_id", BigInteger),
        Column("date_from", TZ, nullable=False),
        Column("date_to", TZ, nullable=False),
        Column("date_extracted", TZ, nullable=False),
        Column("status", Text, nullable=False, server_default="pending"),
        Column("encoding", Text),
        Column("rows_read", BigInteger),
        Column("rows_raw", BigInteger),
        Column("rows_staged", BigInteger),
        Column("rows_rejected", BigInteger),
        Column("rows_superseded", BigInteger, comment="Rows whose key repeats later in the file"),
        Column("attempts", Integer, nullable=False, server_default="0"),
        Column("error", Text),
        Column("error_detail", JSONB),
        Column("duplicate_of", BigInteger, ForeignKey("etl.load_run_files.file_id")),
        Column("discovered_at", TZ, nullable=False, server_default=_now()),
        Column("landed_at", TZ),
        Column("staged_at", TZ),
        Column("merged_at", TZ),
        Column("updated_at", TZ, nullable=False, server_default=_now()),
        Column("lease_expires_at", TZ,
               comment="Set when a worker takes the file; pending/landed past it: the worker was lost"),
        Column("leased_by", Text, comment="The process that took the lease (host and pid)"),
        UniqueConstraint("s3_bucket", "s3_key", "s3_version_id"),
        UniqueConstraint("s3_version_id", "file_hash"),
        CheckConstraint(_in("status", FILE_STATUSES), name="status"),
        Index(None, "file_hash"),
        Index(None, "extract", "date_extracted"),
        schema=naming.ETL,
    )
    Table(
        "reprocess_requests",
        metadata,
        Column("request_id", BigInteger, Identity(), primary_key=True),
        Column("file_id", BigInteger, ForeignKey("etl.load_run_files.file_id"), nullable=False),
        Column("requested_by", Text, nullable=False),
        Column("reason", Text, nullable=False),
        Column("previous_status", Text, nullable=False),
        Column("requested_at", TZ, nullable=False, server_default=_now()),
        comment="Audit of explicit reprocessing: the only way a landed file version is loaded again",
        schema=naming.ETL,
    )
    Table(
        "skipped_keys",
        metadata,
        Column("skipped_key_id", BigInteger, Identity(), primary_key=True),
        Column("load_run_id", BigInteger, ForeignKey("etl.load_runs.load_run_id"), nullable=False),
        Column("s3_bucket", Text, nullable=False),
        Column("s3_key", Text, nullable=False),
        Column("s3_version_id", Text),
        Column("reason", Text, nullable=False),
        Column("seen_at", TZ, nullable=False, server_default=_now()),
        comment="Keys discovery could not parse; reported, never fatal",
        schema=naming.ETL,
    )
    Table(
        "dq_results",
        metadata,
        Column("dq_result_id", BigInteger, Identity(), primary_key=True),
        Column("load_run_id", BigInteger, ForeignKey("etl.load_runs.load_run_id"), nullable=False),
        Column("file_id", BigInteger, ForeignKey("etl.load_run_files.file_id")),
        Column("extract", Text, nullable=False),
        Column("check_name", Text, nullable=False, comment="e.g. rows_read, reject_rate, null_rate"),
        Column("column_name", Text),
        Column("rule", Text),
        Column("observed", Numeric),
        Column("threshold", Numeric),
        Column("passed", Boolean, nullable=False),
        Column("detail", JSONB),
        Column("checked_at", TZ, nullable=False, server_default=_now()),
        Index(None, "file_id"),
        schema=naming.ETL,
    )
    Table(
        "health",
        metadata,
        Column("extract", Text, primary_key=True),
        Column("last_success_run_id", BigInteger, ForeignKey("etl.load_runs.load_run_id")),
        Column("last_success_at", TZ),
        Column("last_date_extracted", TZ),
        Column("status", Text, nullable=False, server_default="unknown"),
        Column("anomalies", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
        Column("updated_at", TZ, nullable=False, server_default=_now()),
        schema=naming.ETL,
    )
    Table(
        "config",
        metadata,
        Column("extract", Text, nullable=False, comment="Extract name, or '*' for every extract"),
        Column("key", Text, nullable=False),
        Column("value", JSONB, nullable=False),
        Column("source", Text, nullable=False, server_default="contract", comment="contract | operator"),
        Column("updated_at", TZ, nullable=False, server_default=_now()),
        PrimaryKeyConstraint("extract", "key"),
        schema=naming.ETL,
    )


def _ops_tables(metadata: MetaData) -> None:
    """Operations (issue 9): the audit of operator commands and the record of run notifications."""
    Table(
        "operator_actions",
        metadata,
        Column("action_id", BigInteger, Identity(), primary_key=True),
        Column("acted_at", TZ, nullable=False, server_default=_now()),
        Column("actor", Text, nullable=False, comment="Who: --by, else the operating-system user"),
        Column("command", Text, nullable=False, comment="e.g. 'config set', 'domains map'"),
        Column("arguments", JSONB, nullable=False, server_default=text("'{}'::jsonb"),
               comment="The command's arguments (never a secret)"),
        Column("previous", JSONB, comment="What the command replaced (NULL when it added)"),
        comment="Audit of operator commands that change something",
        schema=naming.ETL,
    )
    Table(
        "notifications",
        metadata,
        Column("notification_id", BigInteger, Identity(), primary_key=True),
        Column("load_run_id", BigInteger, ForeignKey("etl.load_runs.load_run_id"), nullable=False),
        Column("run_status", Text, nullable=False, comment="The run's status the message reported"),
        Column("targets", Integer, nullable=False, comment="How many NOTIFY_URLS entries were addressed"),
        Column("delivered", Boolean, comment="NULL while sending; false when any target failed"),
        Column("error", Text, comment="Why the sending failed (never a URL: it may hold a token)"),
        Column("created_at", TZ, nullable=False, server_default=_now()),
        Column("sent_at", TZ),
        # One message per run and outcome: a redelivered finalisation does not notify twice.
        UniqueConstraint("load_run_id", "run_status"),
        comment="Run summaries sent to NOTIFY_URLS",
        schema=naming.ETL,
    )


def _security_tables(metadata: MetaData) -> None:
    """NHI key versions and their rotations; which organisations each reader login may see."""
    Table(
        "nhi_key_versions",
        metadata,
        Column("key_version", Integer, primary_key=True, autoincrement=False),
        Column("fingerprint", Text, nullable=False, unique=True,
               comment="HMAC-SHA256(key, fixed label), truncated: identifies the key, reveals nothing of it"),
        Column("is_active", Boolean, nullable=False, comment="The key core's hashes are computed with"),
        Column("registered_by", Text, nullable=False),
        Column("registered_at", TZ, nullable=False, server_default=_now()),
        Column("retired_at", TZ),
        Index(None, "is_active", unique=True, postgresql_where=text("is_active")),
        comment="Versions of NHI_HMAC_KEY (never the key); exactly one is active",
        schema=naming.ETL,
    )
    Table(
        "nhi_key_rotations",
        metadata,
        Column("rotation_id", BigInteger, Identity(), primary_key=True),
        Column("from_version", Integer, ForeignKey("etl.nhi_key_versions.key_version")),
        Column("to_version", Integer, ForeignKey("etl.nhi_key_versions.key_version"), nullable=False),
        Column("rows_rehashed", JSONB, nullable=False, comment="Per core table: rows whose hash was recomputed"),
        Column("previous_key_proven", Boolean, nullable=False,
               comment="NHI_HMAC_KEY_PREVIOUS matched the retired version (false: rekey --previous-key-lost)"),
        Column("requested_by", Text, nullable=False),
        Column("rotated_at", TZ, nullable=False, server_default=_now()),
        comment="Audit of `indici-ingest rekey`: core re-hashed from stg under a new key version",
        schema=naming.ETL,
    )
    Table(
        "login_organisations",
        metadata,
        Column("login", Text, nullable=False, comment="A login role (member of app_reader or identified_reader)"),
        Column("per_org_id", BigInteger, nullable=False),
        Column("bound_by", Text, nullable=False),
        Column("bound_at", TZ, nullable=False, server_default=_now()),
        PrimaryKeyConstraint("login", "per_org_id"),
        comment="Row-level security: the organisations whose core rows a reader login sees",
        schema=naming.ETL,
    )
    Table(
        "login_organisation_changes",
        metadata,
        Column("change_id", BigInteger, Identity(), primary_key=True),
        Column("login", Text, nullable=False),
        Column("per_org_id", BigInteger, nullable=False),
        Column("action", Text, nullable=False),
        Column("changed_by", Text, nullable=False),
        Column("changed_at", TZ, nullable=False, server_default=_now()),
        CheckConstraint(_in("action", ("bind", "unbind")), name="action"),
        comment="Audit of bind-org / unbind-org",
        schema=naming.ETL,
    )


def _domain_tables(metadata: MetaData, domains: set[str]) -> None:
    for domain in sorted(domains):
        Table(
            naming.domain_table(domain),
            metadata,
            Column("value", Text, primary_key=True, comment="The value exactly as the source writes it"),
            Column("label", Text, comment="Curated meaning; NULL until someone maps it"),
            Column("is_mapped", Boolean, nullable=False, server_default=text("false")),
            Column("first_seen_file_id", BigInteger),
            Column("first_seen_at", TZ, nullable=False, server_default=_now()),
            Column("last_seen_at", TZ, nullable=False, server_default=_now()),
            comment=f"Mapping table of the {domain} domain; grows from the values seen",
            schema=naming.ETL,
        )


def _raw_table(metadata: MetaData, spec: ExtractSpec) -> Table:
    name = naming.raw_table(spec)
    return Table(
        name,
        metadata,
        Column("load_file_id", BigInteger, nullable=False),
        Column("row_number", BigInteger, nullable=False, comment="1-based, in file order"),
        *(Column(c.column, Text, nullable=False, comment=c.source) for c in spec.columns),
        *_lineage_columns(),
        # No primary key: raw is append-only and written once per file version (the ledger's unique
        # constraints and advisory locks guarantee it), and a b-tree would cost COPY a third of its speed.
        # BRIN indexes suit append-only data: a file's rows sit in consecutive blocks, so finding them by
        # load_file_id, or a batch by (date_extracted, extract_type), reads only those blocks.
        Index(None, "load_file_id", "row_number", postgresql_using="brin"),
        Index(None, "date_extracted", "extract_type", postgresql_using="brin"),
        comment=f"{spec.extract} rows exactly as in the file: every field as text",
        schema=naming.RAW,
    )


def _typed(col) -> Column:
    rule = rule_for(col.type)
    return Column(col.column, rule.sa_type, comment=col.source)


def _stg_key_indexes(spec: ExtractSpec) -> list:
    """One row per natural key and file (a key repeated in a file keeps its last row only), and the
    lookups by key.

    A dimension's merge asks, per incoming key, whether a version at least as new exists elsewhere: the
    key's versions in DateExtracted order (one index probe, whatever the history's length), beside the
    unique (file, key). A fact's merge never asks that (the newest version per key is chosen among the
    batch's own rows), so a fact keeps one index for both jobs: unique (key, file), which finds a key's
    rows in every file (trace, a full file's removals) and costs its COPY one random b-tree insertion
    per row instead of two (1M staged Appointments: 11.2-11.6 s -> 9.5-10.1 s for the binary COPY)."""
    nk = spec.natural_key
    if spec.is_dimension:
        return [UniqueConstraint("load_file_id", *nk), Index(None, *nk, "date_extracted")]
    return [UniqueConstraint(*nk, "load_file_id")]


def _stg_table(metadata: MetaData, spec: ExtractSpec) -> Table:
    columns = []
    for col in spec.columns:
        typed = _typed(col)
        typed.nullable = not (col.required or col.column in spec.natural_key)
        columns.append(typed)
    return Table(
        naming.stg_table(spec),
        metadata,
        Column("load_file_id", BigInteger, nullable=False),
        Column("row_number", BigInteger, nullable=False),
        *columns,
        Column("field_errors", JSONB, comment="Values nullified by the contract, with rule and value"),
        Column("s3_version_id", Text, nullable=False),
        Column("file_hash", Text, nullable=False),
        Column("date_extracted", TZ, nullable=False),
        Column("date_to", TZ, nullable=False),
        Column("load_run_id", BigInteger, nullable=False),
        Column("staged_at", TZ, nullable=False, server_default=_now()),
        PrimaryKeyConstraint("load_file_id", "row_number"),
        *_stg_key_indexes(spec),
        comment=f"{spec.extract} rows typed and validated against the contract",
        schema=naming.STG,
    )


def _rejects_table(metadata: MetaData, spec: ExtractSpec) -> Table:
    return Table(
        naming.rejects_table(spec),
        metadata,
        Column("load_file_id", BigInteger, nullable=False),
        Column("row_number", BigInteger, nullable=False),
        Column("load_run_id", BigInteger, nullable=False),
        Column("row_text", Text, nullable=False, comment="The row's fields joined by |^^|"),
        Column("field_errors", JSONB, nullable=False, comment="[{column, rule, value}, ...]"),
        Column("rejected_at", TZ, nullable=False, server_default=_now()),
        PrimaryKeyConstraint("load_file_id", "row_number"),
        comment=f"{spec.extract} rows that broke a reject rule of the contract",
        schema=naming.ETL,
    )


def _core_lineage() -> list[Column]:
    """Every core row names the version that gave it its values (PRODUCT.md guarantee 5).

    No trigger FK to etl.load_run_files (a per-row check each: 1.75 s for 243k inferred patients): a
    merge writes load_file_id from the stg rows of the files it merges, which it marks merged in the
    same transaction, and counts the rows whose lineage names no ledger row as orphans, which fail the
    merge (contracts/sql/merge.py: lineage_relation, dim_lineage_statement, orphan checks)."""
    return [
        Column("load_file_id", BigInteger, nullable=False),
        Column("row_number", BigInteger, nullable=False),
        Column("s3_version_id", Text, nullable=False),
        Column("file_hash", Text, nullable=False),
        Column("date_extracted", TZ, nullable=False),
        Column("date_to", TZ, nullable=False),
        Column("load_run_id", BigInteger, nullable=False),
        Column("merged_at", TZ, nullable=False, server_default=_now()),
    ]


def core_attribute_columns(spec: ExtractSpec) -> list[Column]:
    """Typed columns a core table keeps: free text stays behind, NHIs become a keyed hash + flag."""
    out: list[Column] = []
    for col in spec.columns:
        if col.pii is PiiClass.FREE_TEXT:
            continue
        if col.pii is PiiClass.NHI:
            out.append(Column(naming.nhi_hash_column(col.column), Text, comment="HMAC-SHA256 of NHI"))
            out.append(Column(naming.nhi_valid_column(col.column), Boolean, comment="NHI check passed"))
            out.append(Column(naming.nhi_key_version_column(col.column), Integer,
                              comment="etl.nhi_key_versions.key_version of the hash's key"))
            continue
        typed = _typed(col)
        typed.nullable = col.column not in spec.natural_key
        out.append(typed)
    return out


def coarsened_columns(spec: ExtractSpec) -> list[Column]:
    """Generated columns holding the coarsened form of quasi identifiers (dob -> dob_year), which the
    de-identified core shows instead of the column itself (contracts/model.py Identification)."""
    out: list[Column] = []
    for col in spec.columns:
        if col.coarsening is Coarsening.YEAR:
            expression = f"(EXTRACT(year FROM {col.column}))::smallint"  # a spec column name: an identifier
            out.append(Column(coarsened_column(col), SmallInteger, Computed(expression, persisted=True),
                              comment=f"Year of {col.source}"))
    return out


def _dim_date(metadata: MetaData) -> Table:
    return Table(
        "dim_date",
        metadata,
        Column("date_key", Integer, primary_key=True, autoincrement=False, comment="yyyymmdd"),
        Column("date", Date, nullable=False, unique=True),
        Column("year", SmallInteger, nullable=False),
        Column("month", SmallInteger, nullable=False),
        Column("day", SmallInteger, nullable=False),
        Column("iso_year", SmallInteger, nullable=False),
        Column("iso_week", SmallInteger, nullable=False),
        Column("weekday", SmallInteger, nullable=False, comment="ISO: 1 = Monday"),
        Column("weekday_name", Text, nullable=False),
        Column("nz_financial_year", SmallInteger, nullable=False, comment="Year the FY ends (1 Jul-30 Jun)"),
        Column("nz_financial_quarter", SmallInteger, nullable=False),
        schema=naming.CORE,
    )


def _core_table(metadata: MetaData, spec: ExtractSpec, dims: dict[str, ExtractSpec]) -> Table:
    key = naming.surrogate_key(spec.core.table)
    nk = spec.natural_key
    extra: list = []
    if isinstance(spec.core, FactSpec):
        # Referential integrity by construction, not by trigger: no FOREIGN KEY constraints on facts (a
        # per-row trigger check each, five on a typical fact). The merge resolves every reference or
        # creates an inferred member first, then counts orphans per relation into etl.dq_results and
        # fails when one is not zero (contracts/sql/merge.py: fact_upsert_statement, orphan checks).
        fk_columns = []
        for ref in references(spec, {**dims, spec.extract: spec}):
            target = ref.target
            fk_columns.append(
                Column(
                    ref.fk,
                    BigInteger,
                    comment=f"Version of {target.core.table} valid at the fact's main date",
                )
            )
        extra = [
            *fk_columns,
            # FK columns are indexed: re-pointing facts and removing obsolete dimension versions look
            # facts up by them.
            *(Index(None, c.name) for c in fk_columns),
            Column("date_key", Integer, comment="Main date"),
            Column("is_removed", Boolean, nullable=False, server_default=text("false")),
            Column("removed_at", TZ, comment="Set when a full file no longer holds the row"),
            UniqueConstraint(*nk),
        ]
    else:
        extra = [
            Column("effective_from", TZ, nullable=False, comment="DateExtracted of this version"),
            Column("effective_to", TZ, comment="DateExtracted of the next version; NULL if open"),
            Column("is_current", Boolean, nullable=False),
            Column("is_inferred", Boolean, nullable=False, server_default=text("false")),
            Column("is_removed", Boolean, nullable=False, server_default=text("false")),
            UniqueConstraint(*nk, "effective_from"),
            Index(
                f"uq_{spec.core.table}_current",
                *nk,
                unique=True,
                postgresql_where=text("is_current"),
            ),
        ]
    return Table(
        spec.core.table,
        metadata,
        Column(key, BigInteger, Identity(), primary_key=True),
        *core_attribute_columns(spec),
        *coarsened_columns(spec),
        *extra,
        *_core_lineage(),
        comment=f"Curated {spec.extract} ({spec.core.role})",
        schema=naming.CORE,
    )


def build_metadata(specs: dict[str, ExtractSpec] | None = None) -> MetaData:
    """The full target schema of the four zones, derived from the contracts."""
    specs = specs if specs is not None else load_all()
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    _etl_tables(metadata)
    _ops_tables(metadata)
    _security_tables(metadata)
    _domain_tables(metadata, {c.domain for s in specs.values() for c in s.columns if c.domain})
    _dim_date(metadata)
    dims = {name: s for name, s in specs.items() if s.is_dimension}
    # Dimensions before facts so that FKs resolve in creation order.
    for spec in sorted(specs.values(), key=lambda s: (not s.is_dimension, s.extract)):
        _raw_table(metadata, spec)
        _stg_table(metadata, spec)
        _rejects_table(metadata, spec)
        _core_table(metadata, spec, dims)
    return metadata


_METADATA: MetaData | None = None


def metadata() -> MetaData:
    """The cached target metadata (what alembic compares the database with)."""
    global _METADATA
    if _METADATA is None:
        _METADATA = build_metadata()
    return _METADATA
