#!/usr/bin/env bash
# Install Debian's PostgreSQL server binaries for the sweep test on a real database server
# (tests/test_sweep_postgres.py, run through .ci/with_postgres.sh). Does nothing when they
# are there already. No cluster is started here: with_postgres.sh starts a throw-away one.
set -euo pipefail

if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "postgresql already installed: $(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install_postgres.sh: need root (or sudo) to apt-get install postgresql" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
# policy-rc.d or not, the package's own cluster is never needed: with_postgres.sh makes one
$SUDO apt-get install -y --no-install-recommends postgresql
ls -d /usr/lib/postgresql/*/bin
