#!/usr/bin/env bash
# Run CMD... next to a throw-away PostgreSQL server: a fresh cluster in its own temporary
# data folder, on a free local port, with DOMAINGAP_POSTGRES_URL exported for CMD
# (tests/test_sweep_postgres.py); the server is stopped and its folder deleted at the end,
# whatever CMD's outcome. CMD's exit status is the script's.
#   bash .ci/with_postgres.sh .venv/bin/python -m pytest -q -n 2
# Needs Debian's postgresql package (.ci/install_postgres.sh). PostgreSQL refuses to run as
# root: as root the server runs as the 'postgres' user the package creates.
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: bash .ci/with_postgres.sh CMD [ARGS...]" >&2
    exit 2
fi
BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
if [ -z "$BIN" ] || [ ! -x "$BIN/initdb" ]; then
    echo "with_postgres.sh: PostgreSQL is not installed (bash .ci/install_postgres.sh)" >&2
    exit 2
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/domaingap-pg.XXXXXX")"
AS=()
if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown postgres "$TMP"
    AS=(runuser -u postgres --)
fi
DATA="$TMP/data"
stop_server() {
    if [ -f "$DATA/postmaster.pid" ]; then
        "${AS[@]}" "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    fi
    rm -rf "$TMP"
}
trap stop_server EXIT
trap 'exit 130' INT TERM

PORT="${DOMAINGAP_POSTGRES_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
"${AS[@]}" "$BIN/initdb" -D "$DATA" -U domaingap --auth=trust -E UTF8 --no-instructions >"$TMP/initdb.log" 2>&1 \
    || { cat "$TMP/initdb.log" >&2; exit 1; }
# local TCP only; the Unix socket in the temporary folder, not /var/run/postgresql
"${AS[@]}" "$BIN/pg_ctl" -D "$DATA" -l "$TMP/server.log" -w -t 60 \
    -o "-p $PORT -c listen_addresses=127.0.0.1 -k $TMP -c max_connections=100 -c fsync=off" start >/dev/null \
    || { cat "$TMP/server.log" >&2; exit 1; }
"${AS[@]}" "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U domaingap domaingap
export DOMAINGAP_POSTGRES_URL="postgresql://domaingap@127.0.0.1:$PORT/domaingap"
echo "with_postgres.sh: PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') at $DOMAINGAP_POSTGRES_URL" >&2
"$@"
