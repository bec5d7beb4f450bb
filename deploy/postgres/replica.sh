#!/usr/bin/env bash
# The replica's entrypoint: on an empty data directory, copy the primary
# with pg_basebackup -R (a streaming standby, read-only), verifying its
# certificate; then run Postgres as the image does.
set -euo pipefail
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_isready -h postgres -U opsrun_replication -q; do sleep 1; done
  PGPASSWORD="$(cat /run/secrets/pg_replication)" pg_basebackup \
    -d "host=postgres user=opsrun_replication sslmode=verify-full sslrootcert=/run/secrets/ca.crt" \
    -D "$PGDATA" -R -X stream --checkpoint=fast
  chmod 0700 "$PGDATA"
fi
exec postgres
