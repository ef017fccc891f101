#!/usr/bin/env bash
# `make up`: the docker-compose stack without Docker. Postgres and Redis are already
# running (make up runs scripts/bootstrap.sh services first); this creates the database,
# migrates, starts uvicorn and the arq worker in the background (pid files and logs in
# .run/) and waits until /health answers. Idempotent: running services are left alone.
#
# Settings come from the environment (KETTER_*; see infra/.env.example). For a second,
# isolated stack (tests) set KETTER_API_PORT, KETTER_DATABASE_URL, KETTER_REDIS_URL and
# KETTER_RUN_DIR.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

py="${KETTER_PYTHON:-$root/.venv/bin/python}"
run_dir="${KETTER_RUN_DIR:-$root/.run}"
port="${KETTER_API_PORT:-8000}"
host="${KETTER_API_HOST:-127.0.0.1}"
timeout_s="${KETTER_UP_TIMEOUT_S:-60}"
# The API, the worker and a later `make dku` must agree on where the API is.
export KETTER_API_URL="${KETTER_API_URL:-http://$host:$port}"
mkdir -p "$run_dir"

# alive NAME: true when NAME's pid file names a live process that is really ours.
alive() {
  local pid_file="$run_dir/$1.pid" pid
  [ -f "$pid_file" ] || return 1
  pid=$(cat "$pid_file")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"
}

echo "up: migrating $("$py" -c 'import sys; from sqlalchemy import make_url; print(make_url(sys.argv[1]).render_as_string(hide_password=True))' "${KETTER_DATABASE_URL:-postgresql+psycopg2://postgres@127.0.0.1:5432/ketter}")"
"$py" -m mvp_core.db.migrate

start() { # start NAME MATCH ARGV...: background, own session, pid file, appended log
  local name="$1" match="$2"; shift 2
  if alive "$name" "$match"; then
    echo "up: $name already running (pid $(cat "$run_dir/$name.pid"))"
    return 0
  fi
  rm -f "$run_dir/$name.pid"
  # setsid: own process group, so `make down` can stop the worker's rsync/ssh children too
  # and a Ctrl-C in this terminal does not.
  setsid "$@" >>"$run_dir/$name.log" 2>&1 < /dev/null &
  echo $! > "$run_dir/$name.pid"
  echo "up: $name started (pid $!, log $run_dir/$name.log)"
}

start api "mvp_core.app.main:app" \
  "$py" -m uvicorn mvp_core.app.main:app --host "$host" --port "$port"
start worker "mvp_core.worker.run.WorkerSettings" \
  "$py" -m arq mvp_core.worker.run.WorkerSettings

echo "up: waiting up to ${timeout_s}s for $KETTER_API_URL/health"
deadline=$((SECONDS + timeout_s))
while :; do
  for name in api worker; do
    if ! alive "$name" "$([ "$name" = api ] && echo mvp_core.app.main:app || echo mvp_core.worker.run.WorkerSettings)"; then
      echo "up: $name exited; last lines of $run_dir/$name.log:" >&2
      tail -n 30 "$run_dir/$name.log" >&2 || true
      exit 1
    fi
  done
  if "$py" - "$KETTER_API_URL/health" <<'PY' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
  then
    break
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "up: $KETTER_API_URL/health did not answer 200 within ${timeout_s}s" >&2
    tail -n 30 "$run_dir/api.log" >&2 || true
    exit 1
  fi
  sleep 0.5
done
echo "up: Ketter is up at $KETTER_API_URL (stop with: make down)"
