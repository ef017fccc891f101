#!/usr/bin/env bash
# `make bench`: bring the two-namespace lab up, run infra/lab/bench.py, always tear it down.
# By default every profile (BENCH_PROFILE=all: RTT 0, 20, 50 and 100 ms) at a small scale
# (BENCH_SCALE=0.25; BIG's 400 MiB file is never scaled), median of 3, with charts (PNG,
# matplotlib: installed into the venv as the "lab" extra when missing). Full scale
# (issue 9 sizes): BENCH_FULL=1 make bench. BENCH_PROFILE=lan is the old run (0 and 20 ms,
# MANY, TINY, FEW), BENCH_PROFILE=wan the long link only (50 and 100 ms, MANY, FEW, BIG).
# Other knobs (env): BENCH_METHODS (a comma list: only those), BENCH_SERIES (MANY: the
# dataset of the time series chart), BENCH_ONE_CONNECTION (1: also DIRECT on one ssh
# connection, the pre-issue-19 baseline), BENCH_RTTS (the profile's),
# BENCH_REPEATS (3), BENCH_DATASETS (MANY,TINY,FEW), BENCH_KETTER (api | cli | api,cli),
# BENCH_<MANY|TINY|FEW>_<FILES|BYTES>, LAB_RATE (1gbit), LAB_DIR, BENCH_OUT (JSON path;
# the markdown table is written next to it), BENCH_STORAGE (disk | tmpfs), BENCH_VERIFY
# (1: also DIRECT with verify=checksum and verify=size, for the cost of content checks).
#
# BENCH_STORAGE=tmpfs puts both hosts' data (LAB_DIR/data) on a tmpfs of BENCH_TMPFS_SIZE
# (default 14g). Why: this VM's disk throttles file creation after a burst (cp -a of
# 2,000 1 KiB files went 0.09 s -> 1.78 s within one run), so on disk TINY measures
# the throttle, not the transfer. Mounted before the lab starts: REMOTE's sshd runs in
# a private mount namespace and would not see a later mount.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
py="${KETTER_PYTHON:-$repo/.venv/bin/python}"
out="${BENCH_OUT:-$repo/docs/lab_results/bench.json}"
export LAB_DIR="${LAB_DIR:-/var/tmp/ketter-lab}"
storage="${BENCH_STORAGE:-disk}"
data="$LAB_DIR/data"

case "$storage" in
  disk|tmpfs) ;;
  *) echo "bench: BENCH_STORAGE must be disk or tmpfs, not '$storage'" >&2; exit 2 ;;
esac

teardown() {
  bash "$here/netlab.sh" down
  if [ "$storage" = tmpfs ] && mountpoint -q "$data"; then umount "$data"; fi
}

bash "$repo/scripts/bootstrap.sh" lab
"$py" -c 'import matplotlib' 2>/dev/null || "$py" -m pip install -q "$repo[lab]"
export BENCH_PROFILE="${BENCH_PROFILE:-all}"
if [ "${BENCH_FULL:-0}" = 1 ]; then export BENCH_SCALE="${BENCH_SCALE:-1}"; else export BENCH_SCALE="${BENCH_SCALE:-0.25}"; fi
trap teardown EXIT
if [ "$storage" = tmpfs ]; then
  mkdir -p "$data"
  mountpoint -q "$data" || mount -t tmpfs -o "size=${BENCH_TMPFS_SIZE:-14g}" ketter-bench "$data"
fi
LAB_CHECK_MIB="${LAB_CHECK_MIB:-256}" bash "$here/netlab.sh" up
BENCH_STORAGE="$storage" "$py" "$here/bench.py" --out "$out" "$@"
