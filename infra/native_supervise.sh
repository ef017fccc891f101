#!/usr/bin/env bash
# Keeps one process of the native stack running, like docker-compose's
# `restart: unless-stopped`: restarts it when it exits (a crash: the worker rides out
# Redis outages itself), with a growing pause; TERM/INT stop the child and then this loop.
#   native_supervise.sh NAME ARGV...      (started by native_up.sh; pid file = this loop)
set -uo pipefail
name="$1"; shift
child=""
stopping=0

stop() {
  stopping=1
  [ -n "$child" ] && kill -TERM "$child" 2>/dev/null
}
trap stop TERM INT

pause=1
while :; do
  started=$SECONDS
  "$@" &
  child=$!
  # `wait` returns early when a trapped signal arrives; wait again for the real exit.
  wait "$child"; code=$?
  while kill -0 "$child" 2>/dev/null; do wait "$child"; code=$?; done
  child=""
  [ "$stopping" -eq 1 ] && exit 0
  # A process that ran a while gets a quick restart; one that dies at once backs off.
  if [ $((SECONDS - started)) -ge 30 ]; then pause=1; fi
  echo "supervise: $name exited with code $code; restarting in ${pause}s" >&2
  sleep "$pause" & wait $! || true
  [ "$stopping" -eq 1 ] && exit 0
  pause=$(( pause * 2 > 30 ? 30 : pause * 2 ))
done
