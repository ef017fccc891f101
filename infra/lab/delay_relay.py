"""A TCP relay that delays every chunk by RTT/2 in each direction: a round trip on loopback.

The engine's tests put it in front of a test sshd to give every ssh round trip an RTT
(the bench lab itself uses the packet-level ``delay_line.py`` since ebed8ba). It
holds each chunk it reads for ``rtt/2`` before writing it on, in order, in both
directions. Every ssh round trip (handshake, rsync's file-list exchange, window
adjusts, an ``unzip`` command) then costs one RTT, as on a real link. Up to
``--buffer-mib`` per direction may be in flight, far above the bandwidth-delay
product of 1 gbit × 20 ms (2.5 MB), so the relay never caps throughput itself.

What it does not model: TCP slow start and loss on the delayed path (the
relay's own sockets see ~0 RTT on the veth), so short transfers look slightly
better than on a real WAN of the same RTT.

    python delay_relay.py --listen 10.203.0.2:2222 --to 127.0.0.1:22 --rtt-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import signal
import socket
import time

CHUNK = 1 << 20


class _Pipe:
    """One direction of one connection: read, timestamp, hold, write in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 delay_s: float, buffer_bytes: int) -> None:
        self.reader = reader
        self.writer = writer
        self.delay_s = delay_s
        self.buffer_bytes = buffer_bytes
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.queued = 0
        self.eof = False
        self.has_data = asyncio.Event()
        self.has_room = asyncio.Event()
        self.has_room.set()

    async def read_side(self) -> None:
        try:
            while True:
                await self.has_room.wait()
                data = await self.reader.read(CHUNK)
                if not data:
                    break
                self.queue.append((time.monotonic() + self.delay_s, data))
                self.queued += len(data)
                if self.queued >= self.buffer_bytes:
                    self.has_room.clear()
                self.has_data.set()
        except (ConnectionError, OSError):
            pass
        finally:
            self.eof = True
            self.has_data.set()

    async def write_side(self) -> None:
        try:
            while True:
                if not self.queue:
                    if self.eof:
                        break
                    self.has_data.clear()
                    await self.has_data.wait()
                    continue
                due, data = self.queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self.queue.popleft()
                self.queued -= len(data)
                if self.queued < self.buffer_bytes:
                    self.has_room.set()
                self.writer.write(data)
                await self.writer.drain()
            if self.writer.can_write_eof():
                self.writer.write_eof()
        except (ConnectionError, OSError):
            pass


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _serve(args: argparse.Namespace) -> None:
    listen_host, listen_port = args.listen.rsplit(":", 1)
    to_host, to_port = args.to.rsplit(":", 1)
    one_way = args.rtt_ms / 2000.0
    buffer_bytes = args.buffer_mib * 1024 * 1024

    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            u_reader, u_writer = await asyncio.open_connection(to_host, int(to_port), limit=CHUNK)
        except OSError:
            c_writer.close()
            return
        _nodelay(c_writer)
        _nodelay(u_writer)
        up = _Pipe(c_reader, u_writer, one_way, buffer_bytes)
        down = _Pipe(u_reader, c_writer, one_way, buffer_bytes)
        try:
            await asyncio.gather(up.read_side(), up.write_side(),
                                 down.read_side(), down.write_side())
        finally:
            for w in (c_writer, u_writer):
                w.close()

    server = await asyncio.start_server(handle, listen_host, int(listen_port),
                                        limit=CHUNK, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="host:port to accept on")
    parser.add_argument("--to", required=True, help="host:port to forward to")
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="round-trip delay to add")
    parser.add_argument("--buffer-mib", type=int, default=32, help="max bytes held per direction")
    asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
