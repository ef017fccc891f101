"""The path to the remote host: its round-trip time, and how many ssh connections fill it.

Why: one ssh channel has at most ~2 MiB in flight (OpenSSH's channel window), so one
connection moves at most ``window / RTT``: ~100 MB/s at 20 ms, ~20 MB/s at 100 ms.
Streams that share the job's ssh master also share its one TCP connection and its
one ssh process (a single core of crypto). A long link (a studio delivering to another
city) therefore needs several separate connections; a LAN needs one and would only pay
the extra handshakes.

- **RTT**: measured in one ssh session over the job's master (``RTT_PROBE``): the time
  from our "go" to the reply is one round trip (no handshake, no process start in it).
  Only for jobs worth it (``PROBE_MIN_BYTES``): a small job saves its round trips.
- **Channels**: the bandwidth-delay product over what a channel carries per round
  trip, ``ceil(link rate × RTT / (0.85 × 2 MiB))``, at most ``ssh_max_connections``: how many
  transfers the job runs at once (never fewer than its LAN streams). 1 (a LAN: 1 gbit ×
  1 ms is far below one window) keeps today's behaviour exactly.
- **Separate connections**: only when the product exceeds what one TCP connection
  holds in flight (``TCP_WINDOW``, Linux's default ``tcp_wmem`` ceiling of 4 MiB): then
  every transfer opens its own ssh connection; below it they are sessions on the
  master, whose channels each have their own window. Measured (docs/lab_report.md, S6):
  at 20 ms separate connections cost MANY 1.15x (extra ssh processes on a busy host,
  handshakes) and bought nothing, so 20 ms (2.5 MB) stays on the master.
- **Slots**: on a long path the separate connections are ssh masters of their own,
  one per slot (``open_slots``), all started from the job's thread the moment the
  plan is known, so their handshakes (~5 round trips each) overlap the job's last
  control commands instead of delaying the first byte; each stream worker then
  carries every range and stream it takes over its slot's connection (one handshake
  per slot, not per item, and a TCP window already open). In the worker
  (``ssh_persist_s``) the slots' masters come from the process's pool and stay warm
  after the job like the job's own master: the next job to that host opens none.
- **Remembered**: the facts of a path are kept per host for ``REMEMBER_S`` in this
  process (a worker sends job after job to the same client). A push to a host measured
  lately starts its slots beside the job's own master, before any probe (``early``);
  the probe still runs for every big job, beside preflight, and refreshes what is kept.
  A stale guess costs speed only: the measured facts decide the streams.
- **Achieved rate**: the send's bytes over its seconds, reported with the two above in
  the send phase's event and in the job's result, so the planner's calibration can
  tell a WAN job from a LAN one.

Pure except ``measure_rtt``, which runs one remote command through ``ssh``.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from mvp_core.transfer_engine import remote_sh, ssh_master
from mvp_core.transfer_engine.endpoints import SshEndpoint
from mvp_core.transfer_engine.errors import TransferError
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.results import CancelToken
from mvp_core.transfer_engine.runner import Conversation
from mvp_core.transfer_engine.ssh import endpoint_key, remote_command_argv

if TYPE_CHECKING:
    from mvp_core.transfer_engine.ssh_pool import PooledMaster

SSH_CHANNEL_WINDOW = 2 * 1024 * 1024  # OpenSSH CHAN_SES_WINDOW_DEFAULT (64 × 32 KiB)
# What a channel carries per round trip, measured through the delay line at 100 ms
# (one ``ssh cat``: 17.8 MB/s, 85 % of 2 MiB per RTT: the window refills a little late).
CHANNEL_CARRIES = 0.85
TCP_WINDOW = 4 * 1024 * 1024  # Linux's default net.ipv4.tcp_wmem maximum
PROBE_MIN_BYTES = 128 * 1024 * 1024  # two streams' floor: below it one stream runs anyway
REMEMBER_S = 600.0  # how long a measured path is trusted for an early start


@dataclasses.dataclass(frozen=True)
class PathFacts:
    """What the engine learnt about the path of one job (None: not measured)."""

    rtt_s: float | None
    channels: int  # transfers at once the path needs (1: as on a LAN)
    separate: bool = False  # each transfer its own ssh connection

    @property
    def connections(self) -> int:
        """ssh connections the transfers use at most (the master alone: 1)."""
        return self.channels if self.separate else 1

    def details(self) -> dict[str, object]:
        """For the send phase's event."""
        return {"connections": self.connections,
                "rtt_ms": None if self.rtt_s is None else round(self.rtt_s * 1000, 2)}


LAN = PathFacts(None, 1)


def connections_for(rtt_s: float | None, options: EngineOptions,
                    window: int = SSH_CHANNEL_WINDOW) -> int:
    """ssh channels (one transfer each) the bandwidth-delay product needs, each carrying
    ``CHANNEL_CARRIES`` of its window per round trip, within the setting; separate
    connections when ``separate_for`` says so."""
    if rtt_s is None or options.ssh_max_connections <= 1:
        return 1
    bdp = options.link_bytes_s * rtt_s
    return max(1, min(options.ssh_max_connections,
                      math.ceil(bdp / (window * CHANNEL_CARRIES))))


def measure_rtt(endpoint: SshEndpoint, options: EngineOptions,
                cancel: CancelToken | None = None) -> float | None:
    """One round trip to ``endpoint``'s host in seconds, over the job's master; None
    when the probe fails (the job then runs as on a LAN: nothing depends on it)."""
    argv = remote_command_argv(endpoint, ("sh", "-c", remote_sh.RTT_PROBE), options)
    try:
        talk = Conversation(argv, what="measure the round trip")
    except TransferError:
        return None
    try:
        if talk.read_until(remote_sh.RTT_READY, cancel) is None:
            return None
        sent = time.monotonic()
        talk.reply(b"go\n")
        if talk.read_until(remote_sh.RTT_DONE, cancel) is None:
            return None
        return time.monotonic() - sent
    finally:
        talk.finish(cancel)


def separate_for(rtt_s: float | None, options: EngineOptions) -> bool:
    """More in flight than one TCP connection carries: the transfers need their own."""
    return rtt_s is not None and options.link_bytes_s * rtt_s > TCP_WINDOW


_remembered: dict[tuple[object, ...], tuple[float, PathFacts]] = {}
_remembered_lock = threading.Lock()


def remembered(endpoint: SshEndpoint | None) -> PathFacts | None:
    """The facts measured for ``endpoint``'s host in the last ``REMEMBER_S``, if any."""
    if endpoint is None:
        return None
    with _remembered_lock:
        kept = _remembered.get(endpoint_key(endpoint))
    if kept is None or time.monotonic() - kept[0] > REMEMBER_S:
        return None
    return kept[1]


def forget_paths() -> None:
    """Forget every measured path (tests; a worker never needs to)."""
    with _remembered_lock:
        _remembered.clear()


def plan_path(endpoint: SshEndpoint | None, total_bytes: int, options: EngineOptions,
              cancel: CancelToken | None = None) -> PathFacts:
    """Measure the path for a job big enough to use more than one channel."""
    if (endpoint is None or options.ssh_max_connections <= 1
            or total_bytes < PROBE_MIN_BYTES):
        return LAN
    rtt = measure_rtt(endpoint, options, cancel)
    channels = connections_for(rtt, options)
    facts = PathFacts(rtt, channels, channels > 1 and separate_for(rtt, options))
    if rtt is not None:
        with _remembered_lock:
            _remembered[endpoint_key(endpoint)] = (time.monotonic(), facts)
    return facts


def own_connection(options: EngineOptions) -> EngineOptions:
    """Options for a stream that opens its own ssh connection (its own TCP window and
    ssh process) instead of a session on the job's master."""
    return dataclasses.replace(options, ssh_control=None)


@dataclasses.dataclass
class Slots:
    """The separate connections of one job's send: each slot's ssh master, started and
    not waited for yet (None: that master could not start)."""

    endpoint: SshEndpoint
    masters: list[ssh_master.Master | None]

    def options_for(self, slot: int, options: EngineOptions,
                    cancel: CancelToken | None = None) -> EngineOptions:
        """``options`` riding slot ``slot``'s master once it is up; a master that could
        not start leaves that slot to plain connections of its own (the first command
        then reports the real error)."""
        master = self.masters[slot % len(self.masters)] if self.masters else None
        path = None if master is None else master.ready(cancel)
        if path is None:
            return own_connection(options)
        return dataclasses.replace(options, ssh_control=(endpoint_key(self.endpoint), path))


@contextmanager
def open_slots(endpoint: SshEndpoint | None, options: EngineOptions, count: int
               ) -> Iterator[Slots | None]:
    """Start ``count`` ssh masters to ``endpoint`` at once, without waiting for them;
    None (the streams ride the job's master) for fewer than two or no remote. Nothing
    here waits: each stream waits for its slot's master with its own cancel.

    With ``ssh_persist_s`` (the worker) they come from the process's pool and stay warm
    after the job, like the job's own master: the next job to that host finds its
    connections open. Else (the CLI) they are the job's own: this must then be entered
    and left in the job's thread (a master dies with the thread that started it), and
    all are stopped and their socket dirs removed on the way out."""
    if endpoint is None or count < 2:
        yield None
        return
    if options.ssh_persist_s > 0:
        with _pooled_slots(endpoint, options, count) as slots:
            yield slots
        return
    masters: list[ssh_master.Master | None] = []
    try:
        for _ in range(count):
            masters.append(ssh_master.start_master(endpoint, options))
        yield Slots(endpoint, masters)
    finally:
        for master in masters:
            if master is not None:
                master.stop()


@contextmanager
def _pooled_slots(endpoint: SshEndpoint, options: EngineOptions, count: int
                  ) -> Iterator[Slots]:
    """``count`` slot masters from the process's pool: warm ones taken, the others
    started now by the pool; each is released once on the way out."""
    from mvp_core.transfer_engine.ssh_pool import shared_masters  # imports ssh_master

    held: list[PooledMaster | None] = []
    try:
        for i in range(count):
            held.append(shared_masters.acquire(endpoint, options, slot=i))
        yield Slots(endpoint, [None if h is None else h.master for h in held])
    finally:
        for h in held:
            if h is not None:
                shared_masters.release(h)


def rate(bytes_sent: int, seconds: float) -> float | None:
    """Bytes per second achieved, None for a send too short to say."""
    return round(bytes_sent / seconds, 1) if seconds > 0.001 else None
