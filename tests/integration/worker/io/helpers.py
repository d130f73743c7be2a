"""Logins for the access tests: created with grant-login's function, connected to directly (the local
Postgres trusts 127.0.0.1, so the password travels in the URL but is not checked)."""

from __future__ import annotations

from urllib.parse import quote

import psycopg

from worker.io.logins import bind_org, grant_login

TEST_PASSWORD = "a-test-login-password-0123"


def login_url(db_url: str, login: str, password: str | None = None) -> str:
    """The session database's URL with `login` (and its password) as the user."""
    scheme, rest = db_url.split("://", 1)
    userinfo = quote(login) + (f":{quote(password, safe='')}" if password else "")
    return f"{scheme}://{userinfo}@{rest.split('@', 1)[-1]}"


def make_login(db, short: str, role: str, orgs: tuple[int, ...] = (), password: str = TEST_PASSWORD) -> str:
    """Login `<prefix><short>` holding `role`, bound to `orgs`; returns its name."""
    name = db.role_prefix + short
    settings = db.settings()
    with psycopg.connect(db.url) as conn:
        grant_login(conn, settings, name, role, password)
        for org in orgs:
            bind_org(conn, settings, name, org, "test")
        conn.commit()
    return name


def connect_as(db, login: str) -> psycopg.Connection:
    return psycopg.connect(login_url(db.url, login), autocommit=True)
