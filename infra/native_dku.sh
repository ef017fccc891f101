#!/usr/bin/env bash
# `make dku`: the DKU against the native stack, with the same settings file as make up
# (infra/ketter_env.sh), so it asks the API make up started. Arguments go to the DKU.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=infra/ketter_env.sh
source "$root/infra/ketter_env.sh"
ketter_load_env || exit 2
export KETTER_API_URL="${KETTER_API_URL:-http://${KETTER_API_HOST:-127.0.0.1}:${KETTER_API_PORT:-8000}}"
exec "${KETTER_PYTHON:-$root/.venv/bin/python}" -m mvp_core.dku "$@"
