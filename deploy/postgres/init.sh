#!/usr/bin/env bash
# docker-entrypoint-initdb.d step of the primary (runs once, on an empty
# data directory, as the postgres user): TLS only, the least-privilege
# roles of deploy/roles.sql with their passwords from the mounted secrets,
# a replication role for the replica, and SCRAM everywhere.
set -euo pipefail
cp /run/secrets/postgres.crt "$PGDATA/server.crt"
cp /run/secrets/postgres.key "$PGDATA/server.key"
chmod 0600 "$PGDATA/server.key"
cat >> "$PGDATA/postgresql.conf" <<CONF
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
password_encryption = 'scram-sha-256'
CONF
cat > "$PGDATA/pg_hba.conf" <<HBA
local   all          all                       trust
hostssl replication  opsrun_replication  all   scram-sha-256
hostssl all          all                 all   scram-sha-256
hostnossl all        all                 all   reject
HBA

psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -f /etc/opsrun/roles.sql
for role in migrator producer worker reaper monitor; do
  psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" \
    -v role="opsrun_$role" -v password="$(cat "/run/secrets/pg_$role")" \
    -c "ALTER ROLE :\"role\" PASSWORD :'password'"
done
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" \
  -v password="$(cat /run/secrets/pg_replication)" \
  -c "CREATE ROLE opsrun_replication WITH REPLICATION LOGIN PASSWORD :'password'"
