"""NHI key lifecycle: every hash records its key version, merges never mix two keys, `rekey` re-hashes
core from stg in one transaction and records the rotation, and the key never reaches Postgres."""

from __future__ import annotations

import hashlib
import hmac

import psycopg
import pytest
from psycopg import sql

from contracts import naming
from contracts.model import PiiClass
from contracts.registry import load_all
from tests.integration.worker.pipeline.helpers import put_file, run
from worker.io.db import connect
from worker.io.s3 import make_client
from worker.pipeline.identity import ConfigurationError
from worker.pipeline.nhi_keys import RekeyError, rekey
from worker.synth import build_series

pytestmark = pytest.mark.integration

K1 = "first-nhi-hmac-key-of-at-least-32-bytes!"
K2 = "second-nhi-hmac-key-of-at-least-32-bytes"
EXTRACTS = ["Patients", "Providers", "NextOfKin"]
NHI_TABLES = sorted(s.core.table for s in load_all().values() if any(c.pii is PiiClass.NHI for c in s.columns))


def _settings(base, key: str, previous: str | None = None):
    values = {"NHI_HMAC_KEY": key}
    if previous:
        values["NHI_HMAC_KEY_PREVIOUS"] = previous
    return type(base)(**{"DATABASE_URL": base.database_url.get_secret_value(), "DB_ROLE_PREFIX": base.db_role_prefix,
                         "S3_BUCKET": base.s3_bucket, "S3_ENDPOINT_URL": base.s3_endpoint_url,
                         "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", **values})


@pytest.fixture()
def batches(pipeline_settings):
    return build_series(seed=21, patients=6, practices=[(685146, 535)], deltas=1, extracts=EXTRACTS)


def _upload(settings, batch) -> None:
    s3 = make_client(settings)
    for f in batch.files:
        put_file(s3, settings.s3_bucket, f.name, f.data)


def _hmac(key: str, nhi: str) -> str:
    return hmac.new(key.encode(), nhi.strip().upper().encode(), hashlib.sha256).hexdigest()


def _hashes(settings) -> dict[tuple[str, int], tuple[str | None, int | None, str | None]]:
    """(table, surrogate key) -> (stored hash, stored key version, the plain NHI of its stg row)."""
    out = {}
    specs = {s.core.table: s for s in load_all().values()}
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        for table in NHI_TABLES:
            spec = specs[table]
            (col,) = [c.column for c in spec.columns if c.pii is PiiClass.NHI]
            rows = conn.execute(sql.SQL(
                "SELECT c.{k}, c.{h}, c.{v}, s.{n} FROM {core} c LEFT JOIN {stg} s ON s.load_file_id = c.load_file_id "
                "AND s.row_number = c.row_number").format(
                k=sql.Identifier(naming.surrogate_key(table)), h=sql.Identifier(naming.nhi_hash_column(col)),
                v=sql.Identifier(naming.nhi_key_version_column(col)), n=sql.Identifier(col),
                core=sql.Identifier("core", table), stg=sql.Identifier("stg", naming.stg_table(spec)))).fetchall()
            for key, stored, version, plain in rows:
                out[(table, key)] = (stored, version, plain)
    return out


def _assert_all_hashed_with(settings, key: str, version: int) -> int:
    hashes = _hashes(settings)
    hashed = 0
    for where, (stored, stored_version, plain) in hashes.items():
        if plain is None or not plain.strip():
            assert (stored, stored_version) == (None, None), where
        else:
            assert stored == _hmac(key, plain) and stored_version == version, where
            hashed += 1
    assert hashed > 0
    return hashed


def _versions(settings) -> list[tuple]:
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        return conn.execute("SELECT key_version, fingerprint, is_active, retired_at IS NOT NULL "
                            "FROM etl.nhi_key_versions ORDER BY key_version").fetchall()


def test_the_first_merge_registers_the_key_and_every_hash_records_it(pipeline_settings, batches):
    settings = _settings(pipeline_settings, K1)
    _upload(settings, batches[0])
    assert run(settings)["status"] == "succeeded"
    _assert_all_hashed_with(settings, K1, 1)
    ((version, fp, active, retired),) = _versions(settings)
    assert (version, active, retired) == (1, True, False)
    # The fingerprint names the key without being it or a plain digest of it.
    assert len(fp) == 32 and K1 not in fp
    assert fp not in (hashlib.sha256(K1.encode()).hexdigest()[:32], hashlib.md5(K1.encode()).hexdigest())


def test_rotation_end_to_end(pipeline_settings, batches):
    old, new, both = _settings(pipeline_settings, K1), _settings(pipeline_settings, K2), \
        _settings(pipeline_settings, K2, previous=K1)
    _upload(old, batches[0])
    assert run(old)["status"] == "succeeded"

    # A worker configured with the new key alone refuses to merge before the rotation...
    _upload(old, batches[1])
    with pytest.raises(ConfigurationError, match="NHI_HMAC_KEY is not the key core is hashed with"):
        run(new)
    _assert_all_hashed_with(old, K1, 1)
    # ...one configured with new + previous keeps using the active (previous) key: no mixing.
    assert run(both)["status"] == "succeeded"
    rows = _assert_all_hashed_with(old, K1, 1)

    # Rekey without the previous key, or with a wrong one, is refused.
    with connect(new) as conn, pytest.raises(ConfigurationError, match="NHI_HMAC_KEY_PREVIOUS"):
        rekey(conn, new, "test")
    wrong = _settings(pipeline_settings, K2, previous="not-the-key-but-32-bytes-long-too!!")
    with connect(wrong) as conn, pytest.raises(ConfigurationError, match="NHI_HMAC_KEY_PREVIOUS"):
        rekey(conn, wrong, "test")

    with connect(both) as conn:
        summary = rekey(conn, both, "test-operator")
    assert summary["status"] == "rotated" and (summary["from_version"], summary["key_version"]) == (1, 2)
    assert sum(summary["rows_rehashed"].values()) == rows
    _assert_all_hashed_with(old, K2, 2)
    assert [(v, a, r) for v, _, a, r in _versions(old)] == [(1, False, True), (2, True, False)]
    with psycopg.connect(old.database_url.get_secret_value()) as conn:
        rotation = conn.execute("SELECT from_version, to_version, rows_rehashed, requested_by "
                                "FROM etl.nhi_key_rotations").fetchall()
    assert rotation == [(1, 2, summary["rows_rehashed"], "test-operator")]

    # Running it again changes nothing.
    with connect(both) as conn:
        assert rekey(conn, both, "test")["status"] == "unchanged"

    # After the rotation the old key alone is refused, clearly; the new one merges.
    with pytest.raises(ConfigurationError, match="retired"):
        _reload(old, batches[1])
    _reload(new, batches[1])
    _assert_all_hashed_with(old, K2, 2)


def _reload(settings, batch) -> None:
    """Reprocess the batch's Patients file so that a merge has something to do."""
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        (file_id,) = conn.execute("SELECT max(file_id) FROM etl.load_run_files WHERE extract = 'Patients'").fetchone()
    from worker.pipeline import ledger

    with connect(settings) as conn:
        ledger.request_reprocess(conn, file_id, "key test", "test")
    assert run(settings)["status"] == "succeeded"


def test_rekey_changes_nothing_when_a_hash_cannot_be_recomputed(pipeline_settings, batches):
    old, both = _settings(pipeline_settings, K1), _settings(pipeline_settings, K2, previous=K1)
    _upload(old, batches[0])
    assert run(old)["status"] == "succeeded"
    before = _hashes(old)
    with psycopg.connect(old.database_url.get_secret_value()) as conn:
        conn.execute("DELETE FROM stg.patients WHERE (load_file_id, row_number) = "
                     "(SELECT load_file_id, row_number FROM core.dim_patient WHERE nhi_hash IS NOT NULL LIMIT 1)")
    with connect(both) as conn, pytest.raises(RekeyError, match="dim_patient"):
        rekey(conn, both, "test")
    assert _versions(old)[-1][0] == 1 and len(_versions(old)) == 1
    after = _hashes(old)
    assert {k: v[:2] for k, v in after.items()} == {k: v[:2] for k, v in before.items()}


def test_hashes_from_before_key_versions_are_adopted_or_refused(pipeline_settings, batches):
    """A database upgraded to 0006 holds hashes without a version: the first merge adopts them when they
    recompute under NHI_HMAC_KEY, and refuses (pointing at rekey) when they do not."""
    old, new = _settings(pipeline_settings, K1), _settings(pipeline_settings, K2)
    _upload(old, batches[0])
    assert run(old)["status"] == "succeeded"

    def forget_versions():
        with psycopg.connect(old.database_url.get_secret_value()) as conn:
            for table in NHI_TABLES:
                conn.execute(sql.SQL("UPDATE {} SET nhi_key_version = NULL").format(sql.Identifier("core", table)))
            conn.execute("DELETE FROM etl.nhi_key_versions")

    forget_versions()
    with pytest.raises(ConfigurationError, match="rekey"):
        _reload(new, batches[0])
    _reload(old, batches[0])  # the same key: adopted
    _assert_all_hashed_with(old, K1, 1)

    forget_versions()
    with connect(new) as conn:  # rekey without a previous key when no version is recorded
        assert rekey(conn, new, "test")["key_version"] == 1
    _assert_all_hashed_with(old, K2, 1)


def test_keys_never_reach_postgres(pipeline_settings, batches):
    settings = _settings(pipeline_settings, K1)
    _upload(settings, batches[0])
    assert run(settings)["status"] == "succeeded"
    with connect(_settings(pipeline_settings, K2, previous=K1)) as conn:
        rekey(conn, _settings(pipeline_settings, K2, previous=K1), "test")
    needles = [K1, K2, K1.encode().hex(), K2.encode().hex()]
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        tables = conn.execute("SELECT schemaname, tablename FROM pg_tables "
                              "WHERE schemaname IN ('etl', 'core')").fetchall()
        for schema, table in tables:
            statement = sql.SQL("COPY (SELECT * FROM {}) TO STDOUT").format(sql.Identifier(schema, table))
            with conn.cursor().copy(statement) as copy:
                text = b"".join(bytes(chunk) for chunk in copy).decode()
            assert not [n for n in needles if n in text], table
        activity = conn.execute("SELECT string_agg(coalesce(query, ''), ' ') FROM pg_stat_activity").fetchone()[0]
        assert not [n for n in needles if n in (activity or "")]


def test_rekey_waits_for_a_running_merge(pipeline_settings, batches):
    """A merge holds the key lock (shared) until its transaction ends; rekey needs it exclusively."""
    from worker.pipeline.nhi_keys import key_for_merge

    old, both = _settings(pipeline_settings, K1), _settings(pipeline_settings, K2, previous=K1)
    _upload(old, batches[0])
    assert run(old)["status"] == "succeeded"
    with connect(old) as merging, connect(both) as rotating:
        assert key_for_merge(merging, old, "Patients").version == 1  # transaction left open
        rotating.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            rekey(rotating, both, "test")
        merging.rollback()
        rotating.rollback()
        assert rekey(rotating, both, "test")["key_version"] == 2
