#!/usr/bin/env bash
# Builds and starts the docker-compose stack, waits until the API is healthy and the
# migrations are at head. Needs a Docker engine; without one use `make up` (native).
#   infra/dev_up.sh [--dku]    --dku also runs the DKU inside the worker container
#   infra/dev_up.sh --prepare  only write infra/.env (token) and the worker's key pair
set -euo pipefail
# shellcheck source=infra/compose.sh
source "$(cd "$(dirname "$0")" && pwd)/compose.sh"
cd "$KETTER_INFRA_DIR"

run_dku=0 prepare_only=0
case "${1:-}" in
  --dku) run_dku=1 ;;
  --prepare) prepare_only=1 ;;
  "") ;;
  *) echo "usage: $0 [--dku|--prepare]" >&2; exit 2 ;;
esac
timeout_s="${KETTER_DEV_UP_TIMEOUT_S:-240}"

if [ "$prepare_only" -eq 0 ]; then
  ketter_compose_client >/dev/null || exit 2
  ketter_need_engine || exit 2
fi

env_get() { # env_get NAME: value of NAME in .env (last one wins), empty when absent
  sed -n "s/^$1=//p" .env | tail -n 1
}

# Local settings, with a fresh random API token the first time.
if [ ! -f .env ]; then
  install -m 600 .env.example .env  # will hold the token: private from the start
  echo "dev_up: created infra/.env from .env.example"
fi
if [ -z "$(env_get KETTER_API_TOKEN)" ]; then
  token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
  sed -i "s|^KETTER_API_TOKEN=.*|KETTER_API_TOKEN=$token|" .env
  grep -q '^KETTER_API_TOKEN=' .env || echo "KETTER_API_TOKEN=$token" >> .env
  echo "dev_up: generated KETTER_API_TOKEN in infra/.env (not printed)"
fi

# The container user must be able to read the mounted ssh key.
if [ -z "${KETTER_APP_UID:-}" ]; then
  if [ "$(id -u)" -ne 0 ]; then KETTER_APP_UID="$(id -u)"; else
    KETTER_APP_UID="$(env_get KETTER_APP_UID)"; KETTER_APP_UID="${KETTER_APP_UID:-1000}"
  fi
fi
export KETTER_APP_UID

# The worker's ssh identity: a dedicated key pair the first time, never the user's own.
key="$(env_get KETTER_SSH_KEY_FILE)"; key="${KETTER_SSH_KEY_FILE:-${key:-./ssh/id_ed25519}}"
known="$(env_get KETTER_SSH_KNOWN_HOSTS_FILE)"
known="${KETTER_SSH_KNOWN_HOSTS_FILE:-${known:-./ssh/known_hosts}}"
if [ ! -f "$key" ]; then
  if [ "$key" != "./ssh/id_ed25519" ]; then
    echo "dev_up: KETTER_SSH_KEY_FILE=$key does not exist" >&2; exit 2
  fi
  mkdir -p ssh && chmod 700 ssh
  ssh-keygen -q -t ed25519 -N "" -C "ketter-worker" -f ssh/id_ed25519
  echo "dev_up: made infra/ssh/id_ed25519; authorise infra/ssh/id_ed25519.pub on your ssh portals"
fi
if [ ! -f "$known" ]; then
  mkdir -p "$(dirname "$known")"; touch "$known"
  echo "dev_up: created empty $known; add host keys with ssh-keyscan HOST >> $known"
fi
if [ "$(id -u)" -eq 0 ] && [ "$(stat -c %u "$key")" != "$KETTER_APP_UID" ]; then
  chown "$KETTER_APP_UID" "$key" "$known"
fi

if [ "$prepare_only" -eq 1 ]; then
  echo "dev_up: prepared infra/.env and the worker's ssh files"
  exit 0
fi

export DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1
ketter_compose up --build -d

echo "dev_up: waiting up to ${timeout_s}s for the api to be healthy"
deadline=$((SECONDS + timeout_s))
while :; do
  migrate_id=$(ketter_compose ps -q migrate 2>/dev/null || true)
  if [ -n "$migrate_id" ]; then
    state=$(docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$migrate_id" 2>/dev/null || true)
    if [ "${state%% *}" = "exited" ] && [ "${state##* }" != "0" ]; then
      echo "dev_up: migrations failed (exit ${state##* }):" >&2
      ketter_compose logs --tail 40 migrate >&2 || true
      exit 1
    fi
  fi
  api_id=$(ketter_compose ps -q api 2>/dev/null || true)
  health=""
  [ -n "$api_id" ] && health=$(docker inspect -f '{{.State.Health.Status}}' "$api_id" 2>/dev/null || true)
  [ "$health" = "healthy" ] && break
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "dev_up: api not healthy after ${timeout_s}s (status: ${health:-none})" >&2
    ketter_compose ps >&2 || true
    ketter_compose logs --tail 40 api worker >&2 || true
    exit 1
  fi
  sleep 2
done

# Idempotent: a no-op at head, and proves the migrations run from this image.
ketter_compose run --rm --no-deps migrate
echo "dev_up: stack healthy, migrations at head"
echo "dev_up: API on http://${KETTER_API_BIND:-127.0.0.1}:$(env_get KETTER_API_PORT | grep . || echo 8000) (token in infra/.env)"

if [ "$run_dku" -eq 1 ]; then
  ketter_compose exec -T worker python -m mvp_core.dku
else
  echo "dev_up: health check: bash infra/compose.sh exec worker python -m mvp_core.dku"
fi
