"""Generate the next alembic revision from the contracts: `python ops/new_migration.py "message"`.

Creates a scratch database, migrates it to head, lets alembic autogenerate the difference between the
contracts' metadata (contracts/schema.py) and that database, then drops the scratch database. Review
and commit the new file under alembic/versions/.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alembic import command  # noqa: E402

from worker.io.roles import roles  # noqa: E402
from worker.pipeline.migrate import alembic_config  # noqa: E402
from worker.settings import Settings  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("message")
    parser.add_argument("--rev-id", default=None, help="revision id (default: alembic's)")
    parser.add_argument(
        "--admin-url", default=os.environ.get("ADMIN_DATABASE_URL", "postgresql://127.0.0.1:5432/postgres")
    )
    args = parser.parse_args()
    suffix = uuid.uuid4().hex[:8]
    name = f"indici_autogen_{suffix}"
    prefix = f"autogen{suffix}_"
    with psycopg.connect(args.admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    settings = Settings(DATABASE_URL=args.admin_url.rsplit("/", 1)[0] + "/" + name, DB_ROLE_PREFIX=prefix)
    try:
        cfg = alembic_config(settings)
        command.upgrade(cfg, "head")
        command.revision(cfg, message=args.message, autogenerate=True, rev_id=args.rev_id)
    finally:
        with psycopg.connect(args.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            for role in roles(settings).all():
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
