#!/usr/bin/env bash
# `make down`: stops exactly the API and worker that `make up` started (their pid files
# in .run/, or KETTER_RUN_DIR), never anything matched by name. Idempotent.
# KETTER_RUN_DIR may come from the settings file (infra/ketter_env.sh), as for make up.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=infra/ketter_env.sh
source "$root/infra/ketter_env.sh"
ketter_load_env || exit 2
run_dir="${KETTER_RUN_DIR:-$root/.run}"
grace_s="${KETTER_DOWN_GRACE_S:-20}"

stop() { # stop NAME MATCH
  local name="$1" match="$2" pid_file="$run_dir/$1.pid" pid
  if [ ! -f "$pid_file" ]; then
    echo "down: $name not running (no pid file)"
    return 0
  fi
  pid=$(cat "$pid_file")
  # A pid file can outlive its process and the pid be reused: check it is still ours.
  if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null \
     || ! tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$match"; then
    echo "down: $name not running (stale pid file)"
    rm -f "$pid_file"
    return 0
  fi
  # TERM lets the worker mark its job and uvicorn finish requests.
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 $((grace_s * 4))); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "down: $name (pid $pid) ignored TERM for ${grace_s}s; killing its process group"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  # Children (rsync, ssh, zip) share the group started by setsid; leave none behind.
  kill -TERM -- "-$pid" 2>/dev/null || true
  rm -f "$pid_file"
  echo "down: $name stopped (pid $pid)"
}

stop worker "mvp_core.worker.run.WorkerSettings"
stop api "mvp_core.app.main:app"
