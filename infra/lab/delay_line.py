"""A packet-level long link between the lab's two namespaces: rate, queue and delay per packet.

Our kernel has neither ``sch_netem`` nor ``sch_fq``, so the lab cannot delay packets
with ``tc``. This program owns one TUN device in each namespace (LAB's and REMOTE's)
and forwards every IP packet from one to the other the way a bottleneck link would:
it is serialised at ``--rate`` behind the packets before it, dropped when the queue
already holds more than ``--queue-ms`` of sending, and delivered ``rtt/2`` later.

Why per packet and not per TCP stream (``delay_relay.py``): the relay ends TCP on both
sides, so a connection through it is never limited by its own window or slow start.
Through this line the kernel's TCP on each host sees the real RTT, so one connection
is bounded by its window and its congestion control, as on a studio's WAN, and the
benefit of separate connections can be measured.

The devices carry virtio-net headers with TSO and checksum offload, so TCP still
runs with a 1448-byte MSS while most reads return a 64 KiB burst of segments: at
1 gbit that is about 2,000 reads a second per direction, which Python handles on
one core. A dropped burst loses all its segments at once (coarser than a router).

    python delay_line.py --lab-ns L --remote-ns R --lab-dev l-wan --remote-dev r-wan \\
        --rtt-ms 100 --rate 1gbit --ready /run/line.ready
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import fcntl
import os
import selectors
import signal
import struct
import sys
import time
from pathlib import Path

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
CLONE_NEWNET = 0x40000000
VNET_HDR = 10          # struct virtio_net_hdr, the default size for IFF_VNET_HDR
READ_SIZE = 1 << 17    # a 64 KiB GSO burst plus its header fits
BURST = 64             # reads per device per turn, so one busy direction cannot starve the other


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def open_tun(netns: str, name: str) -> int:
    """Create TUN device ``name`` inside namespace ``netns``; the fd works from anywhere."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        _setns(f"/run/netns/{netns}")
        fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI | IFF_VNET_HDR))
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        os.set_blocking(fd, False)
        return fd
    finally:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.setns(home, CLONE_NEWNET)
        os.close(home)


class Direction:
    """One way of the link: a FIFO of packets, each with the moment it arrives."""

    def __init__(self, src: int, dst: int, one_way_s: float, rate_bps: float, queue_s: float) -> None:
        self.src, self.dst = src, dst
        self.one_way_s = one_way_s
        self.rate_bps = rate_bps
        self.queue_s = queue_s
        self.busy_until = 0.0
        self.held: collections.deque[tuple[float, bytes]] = collections.deque()
        self.packets = self.dropped = self.bytes = 0

    def take(self, now: float) -> None:
        """Read what the sending host has put on the wire; queue or drop each packet."""
        for _ in range(BURST):
            try:
                pkt = os.read(self.src, READ_SIZE)
            except BlockingIOError:
                return
            size = len(pkt) - VNET_HDR
            start = max(now, self.busy_until)
            if start - now > self.queue_s:
                self.dropped += 1
                continue
            self.busy_until = start + size * 8 / self.rate_bps if self.rate_bps else start
            self.held.append((self.busy_until + self.one_way_s, pkt))
            self.packets += 1
            self.bytes += size

    def deliver(self, now: float) -> float | None:
        """Hand every packet whose time has come to the receiving host; next due time."""
        while self.held:
            due, pkt = self.held[0]
            if due > now:
                return due
            self.held.popleft()
            try:
                os.write(self.dst, pkt)
            except OSError:
                self.dropped += 1   # the receiving device is down or full: a lost packet
        return None


def parse_rate(text: str) -> float:
    """tc's rate words (``1gbit``, ``500mbit``, ``100kbit``, ``0``) in bits per second."""
    units = {"gbit": 1e9, "mbit": 1e6, "kbit": 1e3, "bit": 1.0}
    for unit, scale in units.items():
        if text.lower().endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float(text)


def run(args: argparse.Namespace) -> int:
    lab = open_tun(args.lab_ns, args.lab_dev)
    remote = open_tun(args.remote_ns, args.remote_dev)
    one_way = args.rtt_ms / 2000.0
    rate = parse_rate(args.rate)
    queue_s = (args.queue_ms if args.queue_ms is not None else max(args.rtt_ms, 5.0)) / 1000.0
    ways = [Direction(lab, remote, one_way, rate, queue_s), Direction(remote, lab, one_way, rate, queue_s)]
    sel = selectors.DefaultSelector()
    for way in ways:
        sel.register(way.src, selectors.EVENT_READ, way)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if args.ready:
        Path(args.ready).write_text(f"{os.getpid()}\n")
    while not stop:
        now = time.monotonic()
        due = [d for d in (way.deliver(now) for way in ways) if d is not None]
        timeout = max(0.0, min(due) - time.monotonic()) if due else 0.5
        for key, _ in sel.select(timeout):
            key.data.take(time.monotonic())
    for name, way in zip(("lab->remote", "remote->lab"), ways):
        print(f"{name}: {way.packets} bursts, {way.bytes} bytes, {way.dropped} dropped", file=sys.stderr)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab-ns", required=True)
    parser.add_argument("--remote-ns", required=True)
    parser.add_argument("--lab-dev", required=True)
    parser.add_argument("--remote-dev", required=True)
    parser.add_argument("--rtt-ms", type=float, default=100.0, help="round-trip delay to add")
    parser.add_argument("--rate", default="1gbit", help="link rate in tc's words (1gbit, 500mbit); 0 = unlimited")
    parser.add_argument("--queue-ms", type=float, default=None,
                        help="drop a packet that would wait longer than this (default: one RTT)")
    parser.add_argument("--ready", help="file written once both devices exist")
    sys.exit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
