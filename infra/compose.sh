#!/usr/bin/env bash
# Runs the compose client on infra/docker-compose.yml with infra/.env, whichever client
# this machine has (`docker compose` v2 or Debian's `docker-compose`).
#   bash infra/compose.sh config -q     validate (no engine needed)
# Sourced by dev_up.sh / dev_down.sh for ketter_compose and ketter_need_engine.
# KETTER_COMPOSE_ENV: the file for variable substitution (default infra/.env, else the
# documented defaults in infra/.env.example).
set -euo pipefail

KETTER_INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KETTER_COMPOSE_FILE="$KETTER_INFRA_DIR/docker-compose.yml"

ketter_compose_client() {
  # Prints the client as words: "docker compose" or "docker-compose".
  if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    echo "docker compose"
  elif command -v docker-compose >/dev/null 2>&1; then
    echo "docker-compose"
  else
    echo "ketter: no compose client: install the docker compose plugin or Debian's" \
      "docker-compose (scripts/bootstrap.sh services does)" >&2
    return 2
  fi
}

ketter_compose() {
  local client env_file
  client=$(ketter_compose_client) || return 2
  env_file="${KETTER_COMPOSE_ENV:-$KETTER_INFRA_DIR/.env}"
  if [ ! -f "$env_file" ]; then
    # No local settings yet: validate against the documented defaults.
    env_file="$KETTER_INFRA_DIR/.env.example"
    export KETTER_ENV_FILE="${KETTER_ENV_FILE:-.env.example}"
  fi
  # shellcheck disable=SC2086  # $client is one or two words on purpose
  $client -f "$KETTER_COMPOSE_FILE" --env-file "$env_file" "$@"
}

ketter_need_engine() {
  # Fails clearly when no Docker engine answers (the usual case on the lab's CI machine).
  local why
  if ! command -v docker >/dev/null 2>&1; then
    echo "ketter: no docker CLI on this machine; run the stack natively with 'make up'" >&2
    return 2
  fi
  if ! why=$(docker info 2>&1 >/dev/null); then
    echo "ketter: no Docker engine reachable ($(echo "$why" | tail -n 1))." >&2
    echo "ketter: start Docker, or run the same stack natively with 'make up'" >&2
    return 2
  fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  ketter_compose "$@"
fi
