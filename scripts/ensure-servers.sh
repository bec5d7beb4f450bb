#!/usr/bin/env bash
# Make sure the server binaries the demo and the tests start are installed:
# PostgreSQL when DATABASE_URL is not set, redis-server (with redis-cli) when
# REDIS_URL is not, and with --browser (the test suite), Chromium and
# ChromeDriver for the browser test, PgBouncer for the pooler tests,
# Prometheus (with promtool) for the metrics test, and redis-server in any
# case.
# Installs them with apt-get when missing (as root, or through sudo), unless
# OPSRUN_NO_INSTALL=1. The servers themselves are started, ephemeral, by the
# program that needs them; nothing is left running.
set -euo pipefail

missing=()
if [ -z "${DATABASE_URL:-}" ] && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  missing+=(postgresql)
fi
# The test suite starts its own Redis Cluster, Sentinels and TLS server even
# when REDIS_URL names a server, so `make test` (--browser) always needs them.
if { [ -z "${REDIS_URL:-}" ] || [ "${1:-}" = --browser ]; } \
   && ! { command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; }; then
  missing+=(redis-server)
fi
if [ "${1:-}" = --browser ] && ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then
  missing+=(chromium chromium-driver)
fi
if [ "${1:-}" = --browser ] && ! { command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]; }; then
  missing+=(pgbouncer)
fi
if [ "${1:-}" = --browser ] && ! { command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; }; then
  missing+=(prometheus)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "${OPSRUN_NO_INSTALL:-0}" = 1 ]; then
  echo "missing: ${missing[*]}; install them or set DATABASE_URL/REDIS_URL (OPSRUN_NO_INSTALL=1 forbids installing)" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "missing: ${missing[*]}; run as root or install them" >&2; exit 1; }
  sudo=sudo
fi
echo "installing ${missing[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
