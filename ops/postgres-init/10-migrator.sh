#!/bin/sh
# First start of the compose Postgres (docker-entrypoint-initdb.d): the login that migrations run as.
# It owns the database and may create roles, and is no superuser (PRODUCT.md: MIGRATION_DATABASE_URL);
# `indici-ingest migrate` creates the group roles, `indici-ingest grant-login` the service's login.
# The password is read by psql itself (backquotes in \set), so it never appears in a process list.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'EOSQL'
\set migrator_password `cat /secrets/db/migrator_password`
CREATE ROLE indici_migrator LOGIN CREATEROLE PASSWORD :'migrator_password';
SELECT format('ALTER DATABASE %I OWNER TO indici_migrator', current_database()) \gexec
EOSQL
