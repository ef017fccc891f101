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

ketter_buildkit() {
  # Prints 1 when this docker CLI can build with BuildKit, 0 otherwise. Since docker 23
  # BuildKit lives in the buildx plugin and DOCKER_BUILDKIT=1 without it is an error
  # ("BuildKit is enabled but the buildx component is missing or broken"); older CLIs
  # (Debian 12's 20.10) have it built in.
  local major
  command -v docker >/dev/null 2>&1 || { echo 0; return 0; }
  if docker buildx version >/dev/null 2>&1; then echo 1; return 0; fi
  # "Docker version 20.10.24+dfsg1, build 297e128": the client alone, no engine asked.
  major=$(docker --version 2>/dev/null | sed -n 's/^Docker version \([0-9]*\)\..*/\1/p' || true)
  if [ -n "$major" ] && [ "$major" -lt 23 ]; then echo 1; else echo 0; fi
}

ketter_build_env() {
  # BuildKit when the CLI has it, else the classic builder; a value the caller set wins.
  # Builds go through the docker CLI either way (it reads the root .dockerignore too).
  if [ -z "${DOCKER_BUILDKIT:-}" ]; then
    DOCKER_BUILDKIT=$(ketter_buildkit)
    export DOCKER_BUILDKIT
  fi
  export COMPOSE_DOCKER_CLI_BUILD="${COMPOSE_DOCKER_CLI_BUILD:-1}"
}

ketter_compose() {
  local client env_file
  client=$(ketter_compose_client) || return 2
  ketter_build_env
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
