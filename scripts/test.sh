#!/usr/bin/env bash
# Runs the whole test suite on real PostgreSQL and RabbitMQ (each run makes its own
# databases and its own broker virtual host). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
export MSP_TEST_PG_ADMIN_DSN="${MSP_TEST_PG_ADMIN_DSN:-postgresql://msp:msp@127.0.0.1:5432/postgres}"
exec uv run --frozen pytest "$@"
