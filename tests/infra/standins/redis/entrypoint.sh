#!/bin/bash
# redis-server [ARGS]: drop to user redis (owning /data) with protected mode off, as the
# upstream image does; anything else is run as given (the healthcheck's redis-cli).
set -euo pipefail
if [ "${1:-}" = redis-server ]; then
  shift
  chown -R redis:redis /data
  exec setpriv --reuid=redis --regid=redis --init-groups -- \
    redis-server --protected-mode no "$@"
fi
exec "$@"
