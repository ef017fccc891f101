"""One DIRECT job through the engine, its progress sampled over time: the bench's time
series of a job's throughput (issue 19), with the path facts the job recorded.

Runs inside the LAB namespace (``ip netns exec``), like the engine CLI the bench times;
prints one JSON object: ``points`` ([seconds since start, bytes done], every ~0.1 s),
``connections``, ``rtt_ms``, ``send_rate_bytes_s``, ``streams``, ``seconds``.

    python series.py --from SRC --to user@host:port:/dest --identity K --known-hosts H
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mvp_core.transfer_engine.direct import run_transfer
from mvp_core.transfer_engine.endpoints import parse_endpoint
from mvp_core.transfer_engine.job import TransferJob
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.results import Progress

_EVERY_S = 0.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", required=True)
    parser.add_argument("--to", dest="target", required=True)
    parser.add_argument("--identity", type=Path, required=True)
    parser.add_argument("--known-hosts", type=Path, required=True)
    args = parser.parse_args()
    keys = {"identity_file": args.identity, "known_hosts_file": args.known_hosts}
    job = TransferJob(parse_endpoint(args.source, **keys), parse_endpoint(args.target, **keys),
                      job_id=f"series-{os.getpid()}")
    options = EngineOptions(
        temp_dir=Path(os.environ.get("KETTER_TEMP_DIR", "/tmp/ketter_tmp")),
        remote_temp_dir=os.environ.get("KETTER_REMOTE_TEMP_DIR", "/tmp/ketter_tmp_remote"),
        ssh_max_connections=int(os.environ.get("KETTER_SSH_MAX_CONNECTIONS", "8")))
    started = time.monotonic()
    points: list[list[float]] = [[0.0, 0]]

    def progress(p: Progress) -> None:
        now = time.monotonic() - started
        if p.phase == "send" and (now - points[-1][0] >= _EVERY_S or p.bytes_done >= p.bytes_total):
            points.append([round(now, 3), p.bytes_done])

    result = run_transfer(job, options=options, progress=progress)
    print(json.dumps({
        "points": points, "seconds": round(time.monotonic() - started, 3),
        "connections": result.connections, "streams": result.streams,
        "rtt_ms": None if result.rtt_s is None else round(result.rtt_s * 1000, 2),
        "send_rate_bytes_s": result.send_rate_bytes_s, "bytes": result.bytes_transferred,
        "phase_timings": {k: round(v, 3) for k, v in result.phase_timings.items()},
    }))


if __name__ == "__main__":
    main()
