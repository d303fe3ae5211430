# shellcheck shell=bash source-path=SCRIPTDIR
# A throwaway PostgreSQL cluster for tests and benchmarks. Source this file, then call
# `start_throwaway_pg`:
#   - finds Debian's PostgreSQL binaries, installing the `postgresql` package when missing
#     (only possible as root);
#   - as root, runs the cluster as the postgres user (initdb refuses to run as root);
#   - initialises and starts a cluster in a fresh temporary directory, listening on a free
#     loopback port, with durability switched off (fsync, synchronous_commit, full_page_writes);
#     the port is one nothing answers on (bash's /dev/tcp), and another is tried if PostgreSQL
#     still cannot bind it, so nothing beyond bash and PostgreSQL is needed;
#   - exports SWITCHBOARD_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:<port>/postgres;
#   - installs an EXIT trap (replacing any earlier one) that stops the cluster and removes it.
# Expects `set -euo pipefail` in the caller, as scripts/test and scripts/bench have.

# shellcheck source=apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

_pg_log() { printf '==> %s\n' "$*" >&2; }

# Kept global so that the EXIT trap still sees them after start_throwaway_pg returns.
_pg_bin=""
_pg_dir=""
_pg_as=()

_pg_find_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && _pg_bin=$d; done
  return 0
}

# A loopback port below Linux's ephemeral range that nothing answers on (a refused connection
# through bash's /dev/tcp). PostgreSQL's own bind is the final word: the caller retries.
_pg_free_port() {
  local port tries
  for ((tries = 1; tries <= 100; tries++)); do
    port=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  echo "no free loopback port found after $tries tries" >&2
  exit 1
}

# Stops and removes the cluster; the EXIT trap calls it, and calling it twice is harmless.
stop_throwaway_pg() {
  [ -n "$_pg_dir" ] || return 0
  "${_pg_as[@]}" "$_pg_bin/pg_ctl" -D "$_pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$_pg_dir"
  _pg_dir=""
}

start_throwaway_pg() {
  _pg_find_bin
  if [ -z "$_pg_bin" ]; then
    apt_install postgresql
    _pg_find_bin
  fi

  # initdb refuses to run as root: run the cluster as the postgres user (or ourselves).
  _pg_as=()
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    _pg_as=(runuser -u postgres --)
  fi
  _pg_dir=$(mktemp -d "${TMPDIR:-/tmp}/switchboard-pg.XXXXXX")
  chmod 755 "$_pg_dir"
  if [ "$(id -u)" = 0 ]; then chown postgres "$_pg_dir"; fi
  trap stop_throwaway_pg EXIT
  "${_pg_as[@]}" "$_pg_bin/initdb" -D "$_pg_dir/data" -A trust -U postgres -E UTF8 >"$_pg_dir/initdb.log" 2>&1 \
    || { cat "$_pg_dir/initdb.log" >&2; exit 1; }
  local port attempt
  for attempt in 1 2 3 4 5; do
    port=$(_pg_free_port) || exit 1
    rm -f "$_pg_dir/pg.log"
    _pg_log "starting a throwaway PostgreSQL on 127.0.0.1:$port"
    if "${_pg_as[@]}" "$_pg_bin/pg_ctl" -D "$_pg_dir/data" -l "$_pg_dir/pg.log" -w -t 60 \
      -o "-p $port -k $_pg_dir -c listen_addresses=127.0.0.1 -c max_connections=500 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
      start >/dev/null; then
      break
    fi
    # Someone took the port between the probe and the bind: try another one.
    if [ "$attempt" -lt 5 ] && grep -q "could not bind\|Address already in use" "$_pg_dir/pg.log"; then
      continue
    fi
    cat "$_pg_dir/pg.log" >&2
    exit 1
  done

  export SWITCHBOARD_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  return 0
}
