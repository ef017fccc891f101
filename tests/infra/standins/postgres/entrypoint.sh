#!/bin/bash
# postgres [ARGS]: on the first start initialise PGDATA (superuser POSTGRES_USER with
# POSTGRES_PASSWORD, database POSTGRES_DB, scram-sha-256 over TCP), then run the server as
# user postgres in this process (PID 1: `docker stop` reaches it). Anything else: run it.
set -euo pipefail
[ "${1:-}" = postgres ] || exec "$@"
shift
user="${POSTGRES_USER:-postgres}"
db="${POSTGRES_DB:-$user}"
data="${PGDATA:-/var/lib/postgresql/data}"
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }

install -d -o postgres -g postgres -m 700 "$data"
install -d -o postgres -g postgres -m 2777 /var/run/postgresql
if [ ! -s "$data/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?entrypoint: POSTGRES_PASSWORD is required}"
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  chown postgres "$pwfile"
  as_postgres initdb -D "$data" -U "$user" --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >>"$data/pg_hba.conf"
  echo "listen_addresses = '*'" >>"$data/postgresql.conf"
  # Create the database on a private socket, so the healthcheck (pg_isready on the
  # default socket) cannot say ready before it exists.
  sock=$(mktemp -d)
  chown postgres "$sock"
  as_postgres pg_ctl -D "$data" -w -o "-c listen_addresses='' -c unix_socket_directories=$sock" start >/dev/null
  if [ "$db" != postgres ]; then
    as_postgres psql -v ON_ERROR_STOP=1 -h "$sock" -U "$user" -d postgres \
      -c "CREATE DATABASE \"$db\"" >/dev/null
  fi
  as_postgres pg_ctl -D "$data" -m fast -w stop >/dev/null
  rm -rf "$sock"
  echo "entrypoint: initialised $data (user $user, database $db)"
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups -- postgres -D "$data" "$@"
