"""Measure the lab link: application RTT through ssh, raw TCP rate, ssh bulk rate.

Used by ``netlab.sh check`` so every lab run prints what the link really is,
not what was asked for. Stdlib only: it runs inside the namespaces with any python3.

    probe.py rtt -- ssh -i KEY ... root@10.203.1.2        # median echo time via `cat`
    probe.py sink --listen 10.203.0.2:5001                # discard server (REMOTE)
    probe.py send --to 10.203.0.2:5001 --mib 256          # raw TCP bulk rate (LAB)
    probe.py send --to 10.203.1.2:5001 --connections 8    # the link's capacity, 8 at once
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time


def rtt(ssh_argv: list[str], samples: int) -> dict[str, float]:
    """Round trip of one byte through ssh + the link + sshd + `cat` and back."""
    proc = subprocess.Popen(ssh_argv + ["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin and proc.stdout
    times = []
    try:
        for i in range(samples + 1):
            t0 = time.perf_counter()
            proc.stdin.write(b"x\n")
            proc.stdin.flush()
            if proc.stdout.readline() != b"x\n":
                raise SystemExit("rtt probe: echo mismatch (ssh failed?)")
            if i:  # first echo pays the channel set-up
                times.append((time.perf_counter() - t0) * 1000)
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    return {"rtt_ms_median": round(statistics.median(times), 2),
            "rtt_ms_min": round(min(times), 2), "samples": samples}


def _drain(conn: socket.socket) -> None:
    with conn:
        total = 0
        try:
            while chunk := conn.recv(1 << 20):
                total += len(chunk)
            conn.sendall(str(total).encode())
        except OSError:  # a readiness probe that hung up early
            pass


def sink(listen: str) -> None:
    """Accept connections forever, several at once; discard what each sends, reply its count."""
    host, port = listen.rsplit(":", 1)
    srv = socket.create_server((host, int(port)), reuse_port=False)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_drain, args=(conn,), daemon=True).start()


def send(to: str, mib: int, connections: int = 1) -> dict[str, float]:
    """Push MIB mebibytes of zeros to a sink over CONNECTIONS at once; time it until all confirm.

    One connection shows what a single TCP window carries over the link; several show
    the link's capacity (what a transfer could reach at best).
    """
    host, port = to.rsplit(":", 1)
    block = bytes(1 << 20)
    share = [mib // connections + (1 if i < mib % connections else 0) for i in range(connections)]
    got: list[int] = []

    def one(n: int) -> None:
        with socket.create_connection((host, int(port))) as conn:
            for _ in range(n):
                conn.sendall(block)
            conn.shutdown(socket.SHUT_WR)
            got.append(int(conn.recv(64) or b"0"))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(n,)) for n in share]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - t0
    if sum(got) != mib << 20:
        raise SystemExit(f"sink received {sum(got)} bytes, sent {mib << 20}")
    return {"mib": mib, "connections": connections, "seconds": round(secs, 3),
            "mb_per_s": round(mib * 1.048576 / secs, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_rtt = sub.add_parser("rtt")
    p_rtt.add_argument("--samples", type=int, default=10)
    p_rtt.add_argument("ssh", nargs=argparse.REMAINDER)
    p_sink = sub.add_parser("sink")
    p_sink.add_argument("--listen", required=True)
    p_send = sub.add_parser("send")
    p_send.add_argument("--to", required=True)
    p_send.add_argument("--mib", type=int, default=256)
    p_send.add_argument("--connections", type=int, default=1)
    args = parser.parse_args()
    if args.cmd == "rtt":
        argv = [a for a in args.ssh if a != "--"]
        print(json.dumps(rtt(argv, args.samples)))
    elif args.cmd == "sink":
        sink(args.listen)
    else:
        print(json.dumps(send(args.to, args.mib, args.connections)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
