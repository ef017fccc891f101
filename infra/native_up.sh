#!/usr/bin/env bash
# `make up`: the docker-compose stack without Docker. Postgres and Redis are already
# running (make up runs scripts/bootstrap.sh services first); this creates the database,
# migrates, starts uvicorn and the arq worker in the background (pid files and logs in
# .run/, rotated at start-up once over 10 MiB; a long-lived host runs the systemd units of
# infra/systemd/ with the journal instead) and waits until /health answers.
# Idempotent: running services are left alone.
# Each process runs under native_supervise.sh, which restarts it when it exits (as
# compose's `restart: unless-stopped` does). If start-up fails, everything is stopped.
#
# Settings come from the settings file (KETTER_ENV_FILE, default /etc/ketter/ketter.env
# when present; see README "Settings") under the environment's KETTER_*. For a second,
# isolated stack (tests) set KETTER_API_PORT, KETTER_DATABASE_URL, KETTER_REDIS_URL and
# KETTER_RUN_DIR.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
# shellcheck source=infra/ketter_env.sh
source "$root/infra/ketter_env.sh"
ketter_load_env || exit 2

py="${KETTER_PYTHON:-$root/.venv/bin/python}"
run_dir="${KETTER_RUN_DIR:-$root/.run}"
port="${KETTER_API_PORT:-8000}"
host="${KETTER_API_HOST:-127.0.0.1}"
timeout_s="${KETTER_UP_TIMEOUT_S:-60}"
# The API, the worker and a later `make dku` must agree on where the API is.
export KETTER_API_URL="${KETTER_API_URL:-http://$host:$port}"
mkdir -p "$run_dir"

declare -A match=([api]="mvp_core.app.main:app" [worker]="mvp_core.worker.run.WorkerSettings")
command_of() { # command_of NAME: sets cmd to NAME's argv
  case "$1" in
    api) cmd=("$py" -m uvicorn mvp_core.app.main:app --host "$host" --port "$port") ;;
    worker) cmd=("$py" -m arq mvp_core.worker.run.WorkerSettings) ;;
  esac
}

alive() { # alive NAME: its pid file names a live process that is really ours
  local pid_file="$run_dir/$1.pid" pid
  [ -f "$pid_file" ] || return 1
  pid=$(cat "$pid_file")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "${match[$1]}"
}

crashes() { # crashes NAME: how many exits the supervisor has logged so far
  grep -c "^supervise: $1 exited" "$run_dir/$1.log" 2>/dev/null || true
}

fail() {
  echo "up: $*" >&2
  bash "$root/infra/native_down.sh" >&2 || true
  exit 1
}

shown_db=$("$py" -c 'import sys; from sqlalchemy import make_url
print(make_url(sys.argv[1]).render_as_string(hide_password=True))' \
  "${KETTER_DATABASE_URL:-postgresql+psycopg2://postgres@127.0.0.1:5432/ketter}")
echo "up: migrating $shown_db"
"$py" -m mvp_core.db.migrate

rotate_log() { # rotate_log NAME: a log over 10 MiB becomes NAME.log.1 (one kept)
  local log="$run_dir/$1.log"
  if [ -f "$log" ] && [ "$(stat -c %s "$log")" -gt $((10 * 1024 * 1024)) ]; then
    mv -f "$log" "$log.1"
    echo "up: $1's log was over 10 MiB: kept as $log.1"
  fi
}

declare -A crashes_before
for name in api worker; do
  # Only a stopped process's log: a running one keeps writing to its open file.
  alive "$name" || rotate_log "$name"
  crashes_before[$name]=$(crashes "$name"); crashes_before[$name]=${crashes_before[$name]:-0}
  if alive "$name"; then
    echo "up: $name already running (pid $(cat "$run_dir/$name.pid"))"
    continue
  fi
  rm -f "$run_dir/$name.pid"
  # Someone else's server on our port would answer /health for us: refuse, say who to ask.
  if [ "$name" = api ] && (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
    fail "port $port on $host is already in use by another process (set KETTER_API_PORT)"
  fi
  # setsid: own process group, so `make down` also stops the worker's rsync/ssh children,
  # and a Ctrl-C in this terminal does not reach them.
  command_of "$name"
  setsid bash "$root/infra/native_supervise.sh" "$name" "${cmd[@]}" \
    >>"$run_dir/$name.log" 2>&1 < /dev/null &
  echo $! > "$run_dir/$name.pid"
  echo "up: $name started (pid $!, log $run_dir/$name.log)"
done

echo "up: waiting up to ${timeout_s}s for $KETTER_API_URL/health"
deadline=$((SECONDS + timeout_s))
until "$py" - "$KETTER_API_URL/health" 2>/dev/null <<'PY'
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
do
  for name in api worker; do
    if [ "$(crashes "$name")" -gt "${crashes_before[$name]}" ]; then
      tail -n 30 "$run_dir/$name.log" >&2 || true
      fail "$name exited during start-up (log above: $run_dir/$name.log)"
    fi
  done
  if [ "$SECONDS" -ge "$deadline" ]; then
    tail -n 30 "$run_dir/api.log" >&2 || true
    fail "$KETTER_API_URL/health did not answer 200 within ${timeout_s}s"
  fi
  sleep 0.5
done
echo "up: Ketter is up at $KETTER_API_URL (stop with: make down)"
