#!/usr/bin/env bash
# Install (when missing) and start a local PostgreSQL for the registry tests; print the URL to use.
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  apt-get update >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2
fi
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -q "^$version main$"; then
  pg_createcluster "$version" main >&2
fi
pg_ctlcluster "$version" main start >&2 || true
for _ in $(seq 1 30); do
  pg_isready -h 127.0.0.1 -p 5432 -q && break
  sleep 1
done
su postgres -c "psql -q -c \"DO \\\$\\\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lockgate') THEN CREATE ROLE lockgate LOGIN PASSWORD 'lockgate'; END IF; END \\\$\\\$;\"" >&2
su postgres -c "psql -q -tc \"SELECT 1 FROM pg_database WHERE datname = 'lockgate_test'\" | grep -q 1 || createdb -O lockgate lockgate_test" >&2
# A second role and database with a password no log line would hold by chance: the structured
# logs test greps a governed server's output for it (tests/integration/test_logs.py).
su postgres -c "psql -q -c \"DO \\\$\\\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lockgate_logs') THEN CREATE ROLE lockgate_logs LOGIN PASSWORD 'pw-Zq81-logs-c4e7'; END IF; END \\\$\\\$;\"" >&2
su postgres -c "psql -q -tc \"SELECT 1 FROM pg_database WHERE datname = 'lockgate_logs'\" | grep -q 1 || createdb -O lockgate_logs lockgate_logs" >&2
echo "postgresql+psycopg://lockgate:lockgate@127.0.0.1:5432/lockgate_test"
