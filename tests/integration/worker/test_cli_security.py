"""The security commands as an operator runs them: grant-login, bind-org / unbind-org, rekey.

Real processes; the password goes in on stdin or in a file, and no output ever contains it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
import pytest

from tests.conftest import REPO_ROOT
from tests.integration.worker.io.helpers import connect_as

pytestmark = pytest.mark.integration

KEY = "test-nhi-hmac-key-of-at-least-32-bytes"
PASSWORD = "correct-horse-battery-staple-42"


def _cli(db, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "DATABASE_URL": db.url, "MIGRATION_DATABASE_URL": db.url,
                   "DB_ROLE_PREFIX": db.role_prefix, "NHI_HMAC_KEY": KEY, **env}
    if "NHI_HMAC_KEY_PREVIOUS" not in env:
        environment.pop("NHI_HMAC_KEY_PREVIOUS", None)
    done = subprocess.run([sys.executable, "-m", "worker.cli", *args], env=environment, cwd=REPO_ROOT,
                          input=stdin, capture_output=True, text=True, timeout=120)
    assert PASSWORD not in done.stdout + done.stderr
    return done


def _memberships(db, login: str) -> set[str]:
    with psycopg.connect(db.url) as conn:
        return {r[0] for r in conn.execute(
            "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
            "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s", (login,))}


def test_grant_login_creates_then_updates_a_login_with_one_role(migrated_db, tmp_path):
    login = migrated_db.role_prefix + "cli_analyst"
    done = _cli(migrated_db, "grant-login", login, "--role", "identified_reader", stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"login {login} created: holds {migrated_db.role_prefix}identified_reader"
    assert _memberships(migrated_db, login) == {migrated_db.role_prefix + "identified_reader"}
    with psycopg.connect(migrated_db.url) as conn:
        stored = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (login,)).fetchone()[0]
    assert stored.startswith("SCRAM-SHA-256$") and PASSWORD not in stored  # hashed before it left this side

    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "-changed\n")
    done = _cli(migrated_db, "grant-login", login, "--role", "app_reader", "--password-file", str(password_file))
    assert done.returncode == 0, done.stderr
    assert "updated" in done.stdout and "no longer" in done.stdout
    assert _memberships(migrated_db, login) == {migrated_db.role_prefix + "app_reader"}
    with psycopg.connect(migrated_db.url) as conn:
        assert conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (login,)).fetchone()[0] != stored


@pytest.mark.parametrize("args, stdin, message", [
    (["--role", "app_reader"], "short", "at least 12"),
    (["--role", "owner"], PASSWORD, "invalid choice"),
    (["--role", "app_reader", "--password", PASSWORD], None, "never an argument"),
])
def test_grant_login_refuses_bad_requests_without_echoing_the_password(migrated_db, args, stdin, message):
    done = _cli(migrated_db, "grant-login", migrated_db.role_prefix + "cli_refused", *args, stdin=stdin)
    assert done.returncode == 2 and message in done.stderr


def test_grant_login_never_touches_privileged_or_group_roles(migrated_db):
    for name, message in ((migrated_db.role_prefix + "etl_writer", "group roles"), ("postgres", "privileged")):
        done = _cli(migrated_db, "grant-login", name, "--role", "app_reader", stdin=PASSWORD)
        assert done.returncode == 2 and message in done.stderr, done.stderr


def test_bind_and_unbind_org(migrated_db):
    login = migrated_db.role_prefix + "cli_bound"
    assert _cli(migrated_db, "grant-login", login, "--role", "app_reader", stdin=PASSWORD).returncode == 0
    done = _cli(migrated_db, "bind-org", login, "685146", "--by", "ops-person")
    assert done.returncode == 0 and done.stdout.strip() == f"login {login} sees organisations: 685146"
    with connect_as(migrated_db, login) as conn:
        assert conn.execute("SELECT array(SELECT core.reader_per_org_ids())").fetchone()[0] == [685146]
    done = _cli(migrated_db, "unbind-org", login, "685146")
    assert done.returncode == 0 and done.stdout.strip().endswith("organisations: none")
    with psycopg.connect(migrated_db.url) as conn:
        changes = conn.execute("SELECT action, changed_by FROM etl.login_organisation_changes WHERE login = %s "
                               "ORDER BY change_id", (login,)).fetchall()
    assert changes[0] == ("bind", "ops-person") and changes[1][0] == "unbind"
    service = migrated_db.role_prefix + "cli_service"
    assert _cli(migrated_db, "grant-login", service, "--role", "etl_writer", stdin=PASSWORD).returncode == 0
    done = _cli(migrated_db, "bind-org", service, "685146")
    assert done.returncode == 2 and "only readers" in done.stderr


def test_rekey_command(pipeline_settings):
    from tests.integration.conftest import TestDatabase

    db = TestDatabase(url=pipeline_settings.database_url.get_secret_value(), name="",
                      role_prefix=pipeline_settings.db_role_prefix)
    done = _cli(db, "rekey", "--by", "ops-person")  # nothing hashed yet: registers the key
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"status": "rotated", "from_version": None, "key_version": 1,
                                       "previous_key_proven": True,
                                       "rows_rehashed": {"dim_patient": 0, "dim_provider": 0, "fact_next_of_kin": 0}}
    new_key = "a-new-nhi-hmac-key-of-at-least-32-bytes"
    done = _cli(db, "rekey", NHI_HMAC_KEY=new_key)
    assert done.returncode == 2 and "NHI_HMAC_KEY_PREVIOUS" in done.stderr
    assert KEY not in done.stderr and new_key not in done.stderr
    done = _cli(db, "rekey", NHI_HMAC_KEY=new_key, NHI_HMAC_KEY_PREVIOUS=KEY)
    assert done.returncode == 0 and json.loads(done.stdout)["key_version"] == 2
    assert KEY not in done.stdout + done.stderr and new_key not in done.stdout + done.stderr
    lost_key = "a-third-nhi-hmac-key-of-at-least-32-bytes"
    done = _cli(db, "rekey", "--previous-key-lost", NHI_HMAC_KEY=lost_key)
    assert done.returncode == 0 and json.loads(done.stdout)["previous_key_proven"] is False
    with psycopg.connect(db.url) as conn:
        assert conn.execute("SELECT previous_key_proven FROM etl.nhi_key_rotations ORDER BY rotation_id").fetchall() \
            == [(True,), (True,), (False,)]
    done = _cli(db, "rekey", NHI_HMAC_KEY="too-short")
    assert done.returncode == 2 and "NHI_HMAC_KEY must be at least 32 bytes" in done.stderr
    assert "too-short" not in done.stderr
