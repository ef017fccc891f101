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
env_set() { # env_set NAME VALUE: replace (or add) NAME's line in .env
  sed -i "s|^$1=.*|$1=$2|" .env
  grep -q "^$1=" .env || echo "$1=$2" >> .env
}

# Local settings, with a fresh random API token the first time.
if [ ! -f .env ]; then
  install -m 600 .env.example .env  # will hold the token: private from the start
  echo "dev_up: created infra/.env from .env.example"
fi
if [ -z "$(env_get KETTER_API_TOKEN)" ]; then
  env_set KETTER_API_TOKEN "$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
  echo "dev_up: generated KETTER_API_TOKEN in infra/.env (not printed)"
fi

# The container user (uid KETTER_APP_UID) must be able to read the mounted ssh key, and
# the key's owner on the host is that same uid. A non-root operator owns it. Root must
# not hand it to uid 1000 blindly (on a real host an unrelated account): the uid of the
# sudo caller, else the first uid from 10000 that no account on this host has; kept in
# infra/.env so later builds agree.
if [ -z "${KETTER_APP_UID:-}" ]; then
  if [ "$(id -u)" -ne 0 ]; then KETTER_APP_UID="$(id -u)"; else
    KETTER_APP_UID="$(env_get KETTER_APP_UID)"
    if [ -z "$KETTER_APP_UID" ]; then
      if [ -n "${SUDO_UID:-}" ] && [ "$SUDO_UID" != 0 ]; then KETTER_APP_UID="$SUDO_UID"; else
        KETTER_APP_UID=10000
        while getent passwd "$KETTER_APP_UID" >/dev/null; do KETTER_APP_UID=$((KETTER_APP_UID + 1)); done
      fi
      env_set KETTER_APP_UID "$KETTER_APP_UID"
      echo "dev_up: the containers run as uid $KETTER_APP_UID (KETTER_APP_UID in infra/.env)"
    fi
  fi
fi
if ! [[ "$KETTER_APP_UID" =~ ^[1-9][0-9]*$ ]]; then
  echo "dev_up: KETTER_APP_UID=$KETTER_APP_UID is not a uid above 0" >&2; exit 2
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
# Root hands over only the files it made itself; an operator's own key stays theirs.
if [ "$(id -u)" -eq 0 ] && [ "$key" = "./ssh/id_ed25519" ] \
  && [ "$(stat -c %u "$key")" != "$KETTER_APP_UID" ]; then
  chown "$KETTER_APP_UID" "$key" "$known"
fi

if [ "$prepare_only" -eq 1 ]; then
  echo "dev_up: prepared infra/.env and the worker's ssh files"
  exit 0
fi

# BuildKit only when this docker CLI has it (compose.sh's ketter_build_env).
ketter_build_env
echo "dev_up: building with $([ "$DOCKER_BUILDKIT" = 1 ] && echo BuildKit || echo the classic builder)"
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
# What compose published: the shell's value wins over infra/.env, as in substitution.
bind="${KETTER_API_BIND:-$(env_get KETTER_API_BIND)}"
port="${KETTER_API_PORT:-$(env_get KETTER_API_PORT)}"
echo "dev_up: API on http://${bind:-127.0.0.1}:${port:-8000} (token in infra/.env)"

if [ "$run_dku" -eq 1 ]; then
  ketter_compose exec -T worker python -m mvp_core.dku
else
  echo "dev_up: health check: bash infra/compose.sh exec worker python -m mvp_core.dku"
fi
