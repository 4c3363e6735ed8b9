#!/usr/bin/env bash
# A private PostgreSQL server for the store tests: Debian's postgresql
# package, one cluster under one directory, reachable only through a Unix
# socket in that directory (no TCP port, nothing shared with a system
# cluster). Durability is off (fsync, synchronous_commit): the data is
# thrown away, and the tests are about behaviour, not power loss.
#
#   scripts/postgres.sh start   install what is missing, init, start (idempotent); prints the URL
#   scripts/postgres.sh url     the URL of the running server
#   scripts/postgres.sh stop    stop it (the data directory stays for the next start)
#
# Environment: BEAMFLOW_PG_DIR (/tmp/beamflow-pg), BEAMFLOW_PG_PORT (55432:
# only names the socket file), BEAMFLOW_PG_TIMEOUT (30 s).
# As root the server runs as the `postgres` user the package creates
# (PostgreSQL refuses root); otherwise as the calling user.
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

DIR="${BEAMFLOW_PG_DIR:-/tmp/beamflow-pg}"
PORT="${BEAMFLOW_PG_PORT:-55432}"
TIMEOUT="${BEAMFLOW_PG_TIMEOUT:-30}"
DATA="$DIR/data"
SOCK="$DIR/sock"

log() { printf 'postgres: %s\n' "$*" >&2; }
die() { printf 'postgres: error: %s\n' "$*" >&2; exit 1; }

install_packages() {
  dpkg-query -W -f='${Status}' postgresql 2>/dev/null | grep -q "install ok installed" && return
  log "installing Debian's postgresql"
  local sudo=()
  ((EUID == 0)) || sudo=(sudo -n)
  local apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300)
  "${apt[@]}" install -y --no-install-recommends postgresql >&2 \
    || { "${apt[@]}" update >&2 && "${apt[@]}" install -y --no-install-recommends postgresql >&2; } \
    || die "apt-get install postgresql failed"
}

# The newest server binaries the package installed.
bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [[ -x "$d/pg_ctl" ]] || die "no PostgreSQL server binaries under /usr/lib/postgresql"
  printf '%s\n' "$d"
}

as_owner() {
  if ((EUID == 0)); then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

url() {
  local user=postgres
  ((EUID == 0)) || user=$(id -un)
  printf 'postgres://%s@localhost/postgres?host=%s&port=%s\n' "$user" "$SOCK" "$PORT"
}

running() {
  local bin
  bin=$(bindir)
  [[ -f "$DATA/PG_VERSION" ]] && as_owner "$bin/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

start() {
  install_packages
  local bin
  bin=$(bindir)
  if running; then
    url
    return
  fi
  mkdir -p "$DIR"
  if [[ ! -f "$DATA/PG_VERSION" ]]; then
    mkdir -p "$DATA" "$SOCK"
    ((EUID == 0)) && chown -R postgres: "$DIR"
    as_owner "$bin/initdb" -D "$DATA" -A trust -E UTF8 --locale=C.UTF-8 >"$DIR/initdb.log" 2>&1 \
      || die "initdb failed: $(tail -5 "$DIR/initdb.log")"
  fi
  ((EUID == 0)) && chown -R postgres: "$DIR"
  as_owner "$bin/pg_ctl" -D "$DATA" -l "$DIR/server.log" -w -t "$TIMEOUT" \
    -o "-c listen_addresses='' -k $SOCK -p $PORT -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
    start >/dev/null || die "the server did not start: $(tail -5 "$DIR/server.log")"
  log "started in $DIR"
  url
}

stop() {
  local bin
  bin=$(bindir)
  if running; then
    as_owner "$bin/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
    log "stopped"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url) running || die "not running (scripts/postgres.sh start)"; url ;;
  *) die "usage: $0 start|url|stop" ;;
esac
