#!/usr/bin/env bash
# Stops the docker-compose stack. Data volumes are kept unless --volumes is given.
#   infra/dev_down.sh [--volumes]
set -euo pipefail
# shellcheck source=infra/compose.sh
source "$(cd "$(dirname "$0")" && pwd)/compose.sh"

args=(down --remove-orphans)
[ "${1:-}" = "--volumes" ] && args+=(--volumes)

ketter_compose_client >/dev/null || exit 2
ketter_need_engine || exit 2
ketter_compose "${args[@]}"
echo "dev_down: stack stopped"
