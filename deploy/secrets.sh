#!/usr/bin/env bash
# Generate what docker-compose.yml mounts as secrets, into ./secrets:
# a CA and server certificates (Postgres, its replica, PgBouncer, Redis),
# one password per Postgres role and Redis ACL user, each service's URLs
# (verify-full TLS, its own role), PgBouncer's user list and Redis's ACL
# file. Existing files are kept, so running it again changes nothing.
#   deploy/secrets.sh && docker compose up --build --scale worker=3
set -euo pipefail
cd "$(dirname "$0")/.."
umask 077
mkdir -p secrets
cd secrets

password() { [ -s "$1" ] || openssl rand -hex 24 > "$1"; }
certificate() { # name, subjectAltName hosts
  [ -s "$1.crt" ] && return
  openssl req -new -newkey rsa:2048 -nodes -keyout "$1.key" -subj "/CN=$1" -out "$1.csr" 2>/dev/null
  printf 'subjectAltName=%s\n' "$2" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
    -extfile "$1.ext" -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

[ -s ca.crt ] || openssl req -x509 -new -newkey rsa:2048 -nodes -keyout ca.key -days 3650 \
  -subj "/CN=opsrun compose CA" -out ca.crt 2>/dev/null
certificate postgres "DNS:postgres,DNS:postgres-replica"
certificate pgbouncer "DNS:pgbouncer"
certificate redis "DNS:redis"

password postgres_password
roles=(migrator producer worker reaper monitor replication)
for role in "${roles[@]}"; do password "pg_$role"; done
for user in producer worker reaper monitor; do password "redis_$user"; done

tls="sslmode=verify-full&sslrootcert=/run/secrets/ca.crt"
url() { printf 'postgres://opsrun_%s:%s@%s/opsrun?%s' "$1" "$(cat "pg_$1")" "$2" "$tls"; }
# Migrations and `monitor token` commands go straight to the primary; the
# services go through PgBouncer (transaction mode); the monitor reads from
# the replica, through PgBouncer too.
url migrator postgres:5432 > database_url_migrator
for role in producer worker reaper monitor; do url "$role" pgbouncer:6432 > "database_url_$role"; done
url monitor pgbouncer:6432 | sed 's|/opsrun?|/opsrun_replica?|' > read_database_url_monitor
for user in producer worker reaper monitor; do
  printf 'rediss://opsrun_%s:%s@redis:6380/' "$user" "$(cat "redis_$user")" > "redis_url_$user"
done
# docker-compose.cluster.yml's Redis Cluster (plain, no ACL users).
printf 'redis+cluster://redis-1:6379,redis-2:6379,redis-3:6379' > redis_url_cluster

# PgBouncer authenticates clients with SCRAM against these and logs in to
# Postgres with the same password.
: > pgbouncer_users.txt
for role in producer worker reaper monitor; do
  printf '"opsrun_%s" "%s"\n' "$role" "$(cat "pg_$role")" >> pgbouncer_users.txt
done
# Each service's Redis user may touch opsrun's keys only, no dangerous command.
{
  echo "user default off"
  for user in producer worker reaper monitor; do
    echo "user opsrun_$user on >$(cat "redis_$user") ~opsrun:* +@all -@dangerous +info"
  done
} > redis_users.acl

# Each file readable by the user that reads it only: the services (uid
# 10001 in opsrun's image), Postgres and Redis (999 in their images),
# PgBouncer (10003 in deploy/pgbouncer). Certificates are public.
if [ "$(id -u)" = 0 ]; then
  chown 10001:10001 database_url_* read_database_url_* redis_url_*
  chown 999:999 postgres.key pg_* postgres_password redis.key redis_users.acl
  chown 10003:10003 pgbouncer.key pgbouncer_users.txt
fi
chmod 0444 ca.crt ./*.crt
echo "secrets written to $(pwd)"
