#!/usr/bin/env bash
# Install Debian's PostgreSQL server binaries for the sweep test on a real database server
# (tests/test_sweep_postgres.py, run through .ci/with_postgres.sh). Does nothing when they
# are there already. No cluster is started here: with_postgres.sh starts a throw-away one.
set -euo pipefail

if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "postgresql already installed: $(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
    exit 0
fi
bash "$(dirname "$0")/apt_install.sh" postgresql
ls -d /usr/lib/postgresql/*/bin
