#!/usr/bin/env bash
# Ensures a local PostgreSQL server is installed and running for the engine's tests,
# benchmarks and demo, then prints the DATABASE_URL to reach it.
#
#   source <(scripts/pg.sh env)   # start if needed and export DATABASE_URL
#   scripts/pg.sh start | stop | status | url
#
# The server runs as the `postgres` system user (PostgreSQL refuses to run as root),
# with its data directory in $COMMERCE_PG_DIR (default /tmp/commerce-pg), listening on
# 127.0.0.1:$COMMERCE_PG_PORT (default 5433) and on a Unix socket in that directory.
# Local connections are trusted: this server is for development and CI only.
set -euo pipefail

PG_DIR=${COMMERCE_PG_DIR:-/tmp/commerce-pg}
PG_PORT=${COMMERCE_PG_PORT:-5433}
DATA="$PG_DIR/data"
LOG="$PG_DIR/server.log"

log() { printf 'pg.sh: %s\n' "$*" >&2; }

find_bindir() {
  local d
  if command -v pg_config >/dev/null 2>&1; then
    d=$(pg_config --bindir 2>/dev/null || true)
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  fi
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  d=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")
  [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  return 1
}

as_postgres() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

install_postgres() {
  if find_bindir >/dev/null; then return 0; fi
  if [ "$(id -u)" != 0 ]; then
    log "PostgreSQL is not installed; run as root or install it: apt-get install postgresql"
    exit 1
  fi
  log "installing PostgreSQL from the system's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql postgresql-contrib >&2
  # Debian's package starts a cluster of its own on 5432; ours is separate.
}

running() {
  local bin; bin=$(find_bindir) || return 1
  [ -f "$DATA/postmaster.pid" ] && as_postgres "$bin/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

start() {
  install_postgres
  local bin; bin=$(find_bindir)
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  fi
  mkdir -p "$PG_DIR"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$PG_DIR"
  if [ ! -f "$DATA/PG_VERSION" ]; then
    log "initialising a cluster in $DATA"
    as_postgres "$bin/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    cat >> "$DATA/postgresql.conf" <<CONF
# commerce engine development server
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_DIR'
max_connections = 400
shared_buffers = 512MB
wal_buffers = 16MB
max_wal_size = 4GB
checkpoint_timeout = 15min
fsync = on
synchronous_commit = on
CONF
  fi
  if running; then return 0; fi
  log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
  as_postgres "$bin/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start >/dev/null
}

stop() {
  local bin; bin=$(find_bindir) || return 0
  if running; then as_postgres "$bin/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null; fi
}

url() { echo "postgres://postgres@127.0.0.1:$PG_PORT/postgres"; }

case "${1:-env}" in
  start) start; url ;;
  stop) stop ;;
  status) if running; then echo "running: $(url)"; else echo "stopped"; exit 1; fi ;;
  url) url ;;
  env) start; echo "export DATABASE_URL=$(url)" ;;
  *) echo "usage: scripts/pg.sh [env|start|stop|status|url]" >&2; exit 2 ;;
esac
