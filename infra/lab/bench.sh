#!/usr/bin/env bash
# `make bench`: bring the two-namespace lab up, run infra/lab/bench.py, always tear it down.
# Full run (issue 9 sizes, RTT 0 and 20 ms, median of 3): see docs/lab_report.md for its
# duration. Quick run: BENCH_SCALE=0.1 make bench. Other knobs (env): BENCH_RTTS (0,20),
# BENCH_REPEATS (3), BENCH_DATASETS (MANY,TINY,FEW), BENCH_KETTER (api | cli | api,cli),
# BENCH_<MANY|TINY|FEW>_<FILES|BYTES>, LAB_RATE (1gbit), LAB_DIR, BENCH_OUT (JSON path;
# the markdown table is written next to it).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
py="${KETTER_PYTHON:-$repo/.venv/bin/python}"
out="${BENCH_OUT:-$repo/docs/lab_results/bench.json}"

bash "$repo/scripts/bootstrap.sh" lab
trap 'bash "$here/netlab.sh" down' EXIT
LAB_CHECK_MIB="${LAB_CHECK_MIB:-256}" bash "$here/netlab.sh" up
"$py" "$here/bench.py" --out "$out" "$@"
