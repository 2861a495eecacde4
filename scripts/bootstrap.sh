#!/usr/bin/env bash
# Makes this machine able to run the stack and its tests: Debian packages, uv and the locked
# Python environment, a running PostgreSQL with the project's role, and a running RabbitMQ.
# Idempotent and quiet when everything is already there. Sourced by up.sh and test.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$HOME/.local/bin:$PATH"
say() { printf '[bootstrap] %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
  [ "$apt_updated" = 1 ] || { say "apt-get update"; DEBIAN_FRONTEND=noninteractive apt-get update -qq; apt_updated=1; }
  say "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v psql >/dev/null && ls /etc/postgresql/*/main >/dev/null 2>&1 || apt_install postgresql postgresql-client
command -v rabbitmq-server >/dev/null || [ -x /usr/sbin/rabbitmq-server ] || apt_install rabbitmq-server
command -v curl >/dev/null || apt_install curl
[ -x /usr/bin/chromium ] || apt_install chromium  # the browser tests (tests/e2e) drive Debian's Chromium

# PostgreSQL: start the cluster if it is not accepting connections.
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  say "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start || true
  for _ in $(seq 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
pg_isready -q -h 127.0.0.1 -p 5432 || { say "PostgreSQL did not start"; exit 1; }

# The project's role: password login over TCP works under Debian's default pg_hba (scram)
# as well as under trust. Created as the postgres OS user through the local socket.
if ! PGPASSWORD=msp psql -h 127.0.0.1 -U msp -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; then
  say "creating PostgreSQL role msp"
  runuser -u postgres -- psql -q -d postgres -c "DO \$\$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='msp') THEN CREATE ROLE msp LOGIN CREATEDB PASSWORD 'msp'; ELSE ALTER ROLE msp LOGIN CREATEDB PASSWORD 'msp'; END IF; END\$\$;" \
    || psql -h 127.0.0.1 -U postgres -d postgres -q -c "CREATE ROLE msp LOGIN CREATEDB PASSWORD 'msp'"
fi

# RabbitMQ: start it detached if its node does not answer, then wait until the broker
# application itself runs (the node answers pings while it is still booting).
rabbit_running() { timeout 30 rabbitmq-diagnostics -q check_running >/dev/null 2>&1; }
if ! rabbit_running; then
  if ! timeout 15 rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
    say "starting RabbitMQ"
    rabbitmq-server -detached >/dev/null 2>&1 || true
  fi
  for _ in $(seq 90); do rabbit_running && break; sleep 2; done
fi
rabbit_running || { say "RabbitMQ did not start"; exit 1; }

# Python: uv, then the locked environment (every service gets the same versions).
command -v uv >/dev/null || { say "installing uv"; python3 -m pip install -q --root-user-action=ignore uv; }
uv sync --frozen -q
