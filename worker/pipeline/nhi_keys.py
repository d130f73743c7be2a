"""NHI key versions: which key core's hashes are computed with, and rotating it (`indici-ingest rekey`).

The key itself never reaches Postgres. etl.nhi_key_versions records, per version, a fingerprint:
HMAC-SHA256(key, a fixed label), truncated. It tells whether a configured key is a known version and
reveals nothing of the key (recovering a key from it is as hard as from any nhi_hash). Every
`<stem>_hash` in core carries `<stem>_key_version` beside it.

- Merges (`key_for_merge`): the configured key (NHI_HMAC_KEY, or NHI_HMAC_KEY_PREVIOUS during a
  rotation) whose fingerprint is the active version's; none matching is a configuration error, so
  core is never hashed under two keys. The first merge of a database registers NHI_HMAC_KEY as
  version 1 (adopting hashes written before versions were recorded, once a sample of them recomputes
  exactly under that key).
- `rekey`: under an exclusive lock that every merge takes shared, in one transaction: checks that
  NHI_HMAC_KEY_PREVIOUS is the active version (when there is one; `--previous-key-lost` skips that
  proof for a lost or compromised key, and the rotation records it), registers NHI_HMAC_KEY as the next
  version, recomputes every hash of core from the plain NHIs in stg (each core row's lineage names its
  stg row), retires the old version and records the rotation in etl.nhi_key_rotations.

Nothing here logs or returns a key, an NHI or a hash.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from contracts import naming
from contracts.model import ExtractSpec, PiiClass
from contracts.registry import load_all
from worker.log import get_logger
from worker.pipeline.identity import ConfigurationError, hmac_key, nhi_hash
from worker.settings import Settings

log = get_logger(__name__)

# Advisory lock (two-key form) between merges (shared) and rekey (exclusive). ledger.LockSpace uses 1-3,
# orchestration 4; this is far from both.
KEY_LOCK = (1010, 1)
FINGERPRINT_LABEL = b"indici-ingest/nhi-hmac-key/fingerprint/v1"
# Hashes written before key versions existed are adopted once this many of them per table recompute.
ADOPTION_SAMPLE = 200


@dataclass(frozen=True)
class ActiveKey:
    """The key a merge hashes with, and its version (what `<stem>_key_version` records)."""

    key: bytes
    version: int

    def __repr__(self) -> str:  # never print the key
        return f"ActiveKey(version={self.version})"


@dataclass(frozen=True)
class KeyVersion:
    version: int
    fingerprint: str
    is_active: bool


def fingerprint(key: bytes) -> str:
    """Identifies a key without revealing it: HMAC-SHA256(key, fixed label), first 32 hex digits."""
    return hmac.new(key, FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:32]


def _configured(settings: Settings, extract: str | None) -> tuple[bytes, bytes | None]:
    current = settings.nhi_hmac_key.get_secret_value() if settings.nhi_hmac_key else ""
    if not current:
        needed = f"to merge {extract}, which holds NHI numbers" if extract else "to re-key core"
        raise ConfigurationError(f"NHI_HMAC_KEY is not set: it is required {needed}")
    previous = settings.nhi_hmac_key_previous.get_secret_value() if settings.nhi_hmac_key_previous else ""
    return hmac_key(current), (hmac_key(previous) if previous else None)


def nhi_specs() -> list[ExtractSpec]:
    """Extracts whose core table holds NHI hashes."""
    return [s for s in load_all().values() if any(c.pii is PiiClass.NHI for c in s.columns)]


def _versions(conn: psycopg.Connection) -> list[KeyVersion]:
    rows = conn.execute(
        "SELECT key_version, fingerprint, is_active FROM etl.nhi_key_versions ORDER BY key_version").fetchall()
    return [KeyVersion(*row) for row in rows]


def _active(versions: list[KeyVersion]) -> KeyVersion | None:
    return next((v for v in versions if v.is_active), None)


def _lock(conn: psycopg.Connection, exclusive: bool) -> None:
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    conn.execute(sql.SQL("SELECT {}(%s, %s)").format(sql.Identifier(function)), KEY_LOCK)


# -- merges ---------------------------------------------------------------------------------------------
def key_for_merge(conn: psycopg.Connection, settings: Settings, extract: str) -> ActiveKey:
    """The configured key that core's hashes are computed with (see the module docstring). Holds the
    key lock (shared) until the caller's transaction ends, so no rekey runs during the merge."""
    current, previous = _configured(settings, extract)
    if _active(_versions(conn)) is None:
        _lock(conn, exclusive=True)  # the first version is registered by one merge only
        versions = _versions(conn)
        if _active(versions) is None:
            return _register_first(conn, current, versions, extract)
    else:
        _lock(conn, exclusive=False)
        versions = _versions(conn)  # a rekey may have finished while we waited
    active = _active(versions)
    assert active is not None
    for key in (current, previous):
        if key is not None and hmac.compare_digest(fingerprint(key), active.fingerprint):
            return ActiveKey(key, active.version)
    retired = {v.fingerprint: v.version for v in versions if not v.is_active}
    if fingerprint(current) in retired:
        raise ConfigurationError(
            f"NHI_HMAC_KEY is key version {retired[fingerprint(current)]}, retired by `indici-ingest rekey`; "
            f"core is hashed with version {active.version}: configure the new key before merging {extract}")
    raise ConfigurationError(
        f"NHI_HMAC_KEY is not the key core is hashed with (version {active.version}); to rotate to it, set "
        f"NHI_HMAC_KEY_PREVIOUS to the current key and run `indici-ingest rekey` (merge of {extract} refused, "
        "so that core never mixes two keys)")


def _register_first(conn: psycopg.Connection, key: bytes, versions: list[KeyVersion], extract: str) -> ActiveKey:
    if versions:  # all retired: only rekey may choose the next one
        raise ConfigurationError("no NHI key version is active: run `indici-ingest rekey`")
    mismatched = [t for t in _legacy_sample(conn) if not _sample_matches(conn, key, *t)]
    if mismatched:
        tables = ", ".join(sorted({t[0].core.table for t in mismatched}))
        raise ConfigurationError(
            f"core holds NHI hashes made with another key than NHI_HMAC_KEY ({tables}); "
            "run `indici-ingest rekey` to re-hash them under NHI_HMAC_KEY")
    conn.execute(
        "INSERT INTO etl.nhi_key_versions (key_version, fingerprint, is_active, registered_by) "
        "VALUES (1, %s, true, %s)", (fingerprint(key), f"first merge ({extract})"))
    adopted = _adopt_legacy(conn)
    log.info("nhi key version registered", key_version=1, adopted_rows=adopted)
    return ActiveKey(key, 1)


def _nhi_columns(spec: ExtractSpec) -> list[tuple[str, str, str]]:
    """(stg column, core hash column, core key-version column) per NHI column."""
    return [(c.column, naming.nhi_hash_column(c.column), naming.nhi_key_version_column(c.column))
            for c in spec.columns if c.pii is PiiClass.NHI]


def _legacy_sample(conn: psycopg.Connection) -> list[tuple[ExtractSpec, str, str, str]]:
    """(spec, columns...) of NHI columns that hold hashes without a key version."""
    out = []
    for spec in nhi_specs():
        for stg_col, hash_col, version_col in _nhi_columns(spec):
            found = conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {} IS NOT NULL AND {} IS NULL)").format(
                sql.Identifier(naming.CORE, spec.core.table), sql.Identifier(hash_col), sql.Identifier(version_col)
            )).fetchone()
            if found and found[0]:
                out.append((spec, stg_col, hash_col, version_col))
    return out


def _sample_matches(conn: psycopg.Connection, key: bytes, spec: ExtractSpec, stg_col: str, hash_col: str,
                    version_col: str) -> bool:
    rows = conn.execute(sql.SQL(
        "SELECT s.{s}, c.{h} FROM {core} c JOIN {stg} s ON s.load_file_id = c.load_file_id "
        "AND s.row_number = c.row_number WHERE c.{h} IS NOT NULL AND c.{v} IS NULL "
        "ORDER BY c.load_file_id, c.row_number LIMIT %s").format(
        s=sql.Identifier(stg_col), h=sql.Identifier(hash_col), v=sql.Identifier(version_col),
        core=sql.Identifier(naming.CORE, spec.core.table), stg=sql.Identifier(naming.STG, naming.stg_table(spec)),
    ), (ADOPTION_SAMPLE,)).fetchall()
    return bool(rows) and all(hmac.compare_digest(nhi_hash(key, value) or "", stored) for value, stored in rows)


def _adopt_legacy(conn: psycopg.Connection) -> int:
    adopted = 0
    for spec in nhi_specs():
        for _, hash_col, version_col in _nhi_columns(spec):
            adopted += conn.execute(sql.SQL("UPDATE {} SET {v} = 1 WHERE {h} IS NOT NULL AND {v} IS NULL").format(
                sql.Identifier(naming.CORE, spec.core.table), h=sql.Identifier(hash_col), v=sql.Identifier(version_col)
            )).rowcount
    return adopted


# -- rotation -------------------------------------------------------------------------------------------
class RekeyError(RuntimeError):
    """Core cannot be re-hashed (e.g. a core row whose stg row is gone); nothing was changed."""


def rekey(conn: psycopg.Connection, settings: Settings, requested_by: str,
          previous_key_lost: bool = False) -> dict[str, Any]:
    """Re-hash core under NHI_HMAC_KEY in one transaction (see the module docstring). Idempotent: when
    NHI_HMAC_KEY is already the active version, nothing changes. Returns a summary (no key material).

    `previous_key_lost`: the active key is lost or compromised, so NHI_HMAC_KEY_PREVIOUS cannot prove
    it; the hashes are recomputed from stg all the same and the rotation records that it was unproven."""
    new, previous = _configured(settings, None)
    conn.commit()
    with conn.transaction():
        _lock(conn, exclusive=True)  # waits for running merges; blocks new ones until commit
        versions = _versions(conn)
        active = _active(versions)
        if active is not None and hmac.compare_digest(fingerprint(new), active.fingerprint):
            return {"status": "unchanged", "key_version": active.version}
        if any(hmac.compare_digest(fingerprint(new), v.fingerprint) for v in versions):
            raise ConfigurationError("NHI_HMAC_KEY is a retired key version: rotate to a new key")
        proven = previous is not None and active is not None and hmac.compare_digest(fingerprint(previous),
                                                                                      active.fingerprint)
        if active is not None and not proven and not previous_key_lost:
            raise ConfigurationError(
                f"NHI_HMAC_KEY_PREVIOUS must be the key core is hashed with now (version {active.version}) "
                "to rotate away from it")
        version = max((v.version for v in versions), default=0) + 1
        if active is not None:
            conn.execute("UPDATE etl.nhi_key_versions SET is_active = false, retired_at = now() "
                         "WHERE key_version = %s", (active.version,))
        conn.execute(
            "INSERT INTO etl.nhi_key_versions (key_version, fingerprint, is_active, registered_by) "
            "VALUES (%s, %s, true, %s)", (version, fingerprint(new), requested_by))
        counts: dict[str, int] = {}
        for spec in nhi_specs():
            counts[spec.core.table] = _rehash(conn, spec, new, version)
        conn.execute(
            "INSERT INTO etl.nhi_key_rotations (from_version, to_version, rows_rehashed, previous_key_proven, "
            "requested_by) VALUES (%s, %s, %s, %s, %s)",
            (active.version if active else None, version, Jsonb(counts), proven or active is None, requested_by))
    log.info("nhi key rotated", from_version=active.version if active else None, to_version=version,
             rows=sum(counts.values()))
    return {"status": "rotated", "from_version": active.version if active else None, "key_version": version,
            "previous_key_proven": proven or active is None, "rows_rehashed": counts}


def _rehash(conn: psycopg.Connection, spec: ExtractSpec, key: bytes, version: int) -> int:
    """Recompute every hash of one core table from the stg row its lineage names. Returns rows updated."""
    core = sql.Identifier(naming.CORE, spec.core.table)
    stg = sql.Identifier(naming.STG, naming.stg_table(spec))
    updated = 0
    for stg_col, hash_col, version_col in _nhi_columns(spec):
        s, h, v = sql.Identifier(stg_col), sql.Identifier(hash_col), sql.Identifier(version_col)
        conn.execute("DROP TABLE IF EXISTS rekey_nhi")
        conn.execute("CREATE TEMP TABLE rekey_nhi (value text PRIMARY KEY, hash text) ON COMMIT DROP")
        values = conn.execute(sql.SQL(
            "SELECT DISTINCT st.{s} FROM {core} c JOIN {stg} st ON st.load_file_id = c.load_file_id "
            "AND st.row_number = c.row_number WHERE st.{s} IS NOT NULL").format(s=s, core=core, stg=stg)).fetchall()
        with conn.cursor() as cur, cur.copy("COPY rekey_nhi (value, hash) FROM STDIN") as copy:
            for (value,) in values:
                copy.write_row((value, nhi_hash(key, value)))
        updated += conn.execute(sql.SQL(
            "UPDATE {core} c SET {h} = n.hash, {v} = CASE WHEN n.hash IS NULL THEN NULL ELSE %(version)s END "
            "FROM {stg} st LEFT JOIN rekey_nhi n ON n.value = st.{s} "
            "WHERE st.load_file_id = c.load_file_id AND st.row_number = c.row_number "
            "AND (c.{h}, c.{v}) IS DISTINCT FROM (n.hash, CASE WHEN n.hash IS NULL THEN NULL ELSE %(version)s END)"
        ).format(core=core, stg=stg, s=s, h=h, v=v), {"version": version}).rowcount
        left = conn.execute(sql.SQL(
            "SELECT count(*) FROM {core} c WHERE c.{h} IS NOT NULL AND c.{v} IS DISTINCT FROM %s").format(
            core=core, h=h, v=v), (version,)).fetchone()
        if left and left[0]:
            raise RekeyError(
                f"{left[0]} rows of core.{spec.core.table} hold an NHI hash but their stg row (lineage "
                f"load_file_id, row_number) is gone, so it cannot be recomputed; nothing was changed")
    return updated
