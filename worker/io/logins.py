"""Login roles and the organisations they may see: `grant-login`, `bind-org`, `unbind-org`.

Run on the migrating login's connection (MIGRATION_DATABASE_URL: the database owner with CREATEROLE):
the service (etl_writer) may not create logins or change who sees which organisation.

Passwords never reach the server in plain text: the SCRAM-SHA-256 verifier is computed on this side
(libpq's PQencryptPasswordConn, what psql's \\password does), so not even a statement log holds them.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass

import psycopg
from psycopg import sql

from worker.io.roles import ROLE_NAME, Roles, roles
from worker.settings import Settings

MIN_PASSWORD_LENGTH = 12


class LoginError(ValueError):
    """A login cannot be created, changed or bound as asked (the message says why)."""


@dataclass(frozen=True)
class LoginResult:
    login: str
    role: str
    created: bool
    revoked: tuple[str, ...]  # other project roles the login held before


def operator() -> str:
    """Who runs the command, for the audit trail."""
    try:
        return getpass.getuser()
    except Exception:  # no user name in a minimal container: say so
        return "unknown"


def _check_name(name: str, r: Roles) -> None:
    if not ROLE_NAME.match(name):
        raise LoginError(f"login name {name!r} must be letters, digits and underscores (at most 63)")
    if name in r.all():
        raise LoginError(f"{name} is one of the project's group roles, not a login")


def grant_login(conn: psycopg.Connection, settings: Settings, name: str, role: str, password: str) -> LoginResult:
    """Create login `name` (or update its password) holding exactly the project role `role`."""
    r = roles(settings)
    group = r.by_name(role)
    _check_name(name, r)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise LoginError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters")
    if "\n" in password or "\r" in password:
        raise LoginError("the password must be one line")
    found = conn.execute(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolcanlogin "
        "FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
    if found is not None:
        if any(found[:5]):
            raise LoginError(f"{name} is a privileged role (superuser, CREATEROLE, CREATEDB, REPLICATION or "
                             "BYPASSRLS); grant-login manages plain logins only")
        if not found[5]:
            raise LoginError(f"{name} exists and is not a login (a group role?); choose another name")
    verifier = conn.pgconn.encrypt_password(password.encode("utf-8"), name.encode("utf-8"), b"scram-sha-256")
    ident, secret = sql.Identifier(name), sql.Literal(verifier.decode("ascii"))
    if found is None:
        conn.execute(sql.SQL(
            "CREATE ROLE {} LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS "
            "PASSWORD {}").format(ident, secret))
    else:
        conn.execute(sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(ident, secret))
    revoked = []
    for other in (r.writer, r.reader, r.identified_reader, r.engineer):
        if other == group:
            continue
        member = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
            "JOIN pg_roles u ON u.oid = m.member WHERE g.rolname = %s AND u.rolname = %s)", (other, name)).fetchone()
        if member and member[0]:
            conn.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(other), ident))
            revoked.append(other)
    conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), ident))
    return LoginResult(name, group, found is None, tuple(revoked))


def _check_reader(conn: psycopg.Connection, settings: Settings, login: str) -> None:
    r = roles(settings)
    _check_name(login, r)
    row = conn.execute(
        "SELECT rolcanlogin, pg_has_role(oid, %s, 'MEMBER') OR pg_has_role(oid, %s, 'MEMBER') "
        "FROM pg_roles WHERE rolname = %s", (r.reader, r.identified_reader, login)).fetchone()
    if row is None:
        raise LoginError(f"no login named {login} (create it with grant-login)")
    if not row[0] or not row[1]:
        raise LoginError(f"{login} is not a login holding {r.reader} or {r.identified_reader}: only readers "
                         "are bound to organisations (the service sees every organisation)")


def bind_org(conn: psycopg.Connection, settings: Settings, login: str, per_org_id: int, by: str) -> list[int]:
    """Let reader `login` see the core rows of organisation `per_org_id` (audited). Returns its orgs."""
    _check_reader(conn, settings, login)
    added = conn.execute(
        "INSERT INTO etl.login_organisations (login, per_org_id, bound_by) VALUES (%s, %s, %s) "
        "ON CONFLICT DO NOTHING", (login, per_org_id, by)).rowcount
    if added:
        conn.execute("INSERT INTO etl.login_organisation_changes (login, per_org_id, action, changed_by) "
                     "VALUES (%s, %s, 'bind', %s)", (login, per_org_id, by))
    return bound_orgs(conn, login)


def unbind_org(conn: psycopg.Connection, settings: Settings, login: str, per_org_id: int, by: str) -> list[int]:
    """Stop `login` seeing organisation `per_org_id` (audited). Returns its remaining orgs."""
    _check_name(login, roles(settings))
    removed = conn.execute("DELETE FROM etl.login_organisations WHERE login = %s AND per_org_id = %s",
                           (login, per_org_id)).rowcount
    if removed:
        conn.execute("INSERT INTO etl.login_organisation_changes (login, per_org_id, action, changed_by) "
                     "VALUES (%s, %s, 'unbind', %s)", (login, per_org_id, by))
    return bound_orgs(conn, login)


def bound_orgs(conn: psycopg.Connection, login: str) -> list[int]:
    return [row[0] for row in conn.execute(
        "SELECT per_org_id FROM etl.login_organisations WHERE login = %s ORDER BY per_org_id", (login,))]
