"""Warm ssh masters shared by the jobs of one process, kept ``ssh_persist_s`` after use.

Why: an ssh handshake (TCP, key exchange, auth) costs ~0.2 s on an idle LAN and
~0.35 s at 20 ms RTT, more than the whole transfer of a small session. A studio's
jobs go one after the other to the same host, so the worker keeps each master for a
few seconds after its job and the next job to that host starts without a handshake.

Masters are started and stopped by one long-lived thread of the pool: PR_SET_PDEATHSIG
ties a master to the thread that forked it, and a job's thread ends with its job.
They still die with the process (kill -9 included). ssh falls back to its own
connection when a socket is gone, so correctness never depends on a master; a dead
one is replaced at the next job. A cancelled job stops its own rsync/ssh clients,
never the shared master. Acquiring never waits: a new master's handshake overlaps the
job's other work, and each user waits for it with ``ready`` when it needs it.
"""

from __future__ import annotations

import atexit
import dataclasses
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from mvp_core.transfer_engine.endpoints import SshEndpoint
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.results import CancelToken
from mvp_core.transfer_engine.ssh import endpoint_key
from mvp_core.transfer_engine.ssh_master import Master, master_argv, start_master

_REAP_EVERY_S = 1.0


@dataclasses.dataclass
class PooledMaster:
    """One of the pool's masters as its users hold it: how many, and since when none."""

    master: Master
    persist_s: float
    users: int = 0
    idle_since: float = 0.0

    def ready(self, cancel: CancelToken | None = None) -> str | None:
        """Its control path once it listens (at once when warm); None if it cannot."""
        return self.master.ready(cancel)


class MasterPool:
    """Masters keyed by everything that makes an ssh connection (host, port, user,
    identity, known_hosts, timeouts); one per key, shared by concurrent jobs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._masters: dict[tuple[str, ...], PooledMaster] = {}
        self._starting: dict[tuple[str, ...], threading.Lock] = {}
        self._owner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ketter-ssh-pool")
        self._reaper: threading.Thread | None = None

    @contextmanager
    def session(self, endpoint: SshEndpoint, options: EngineOptions,
                cancel: CancelToken | None = None) -> Iterator[EngineOptions]:
        """Run the block over the pool's master for ``endpoint`` (started if needed)."""
        held = self.acquire(endpoint, options)
        if held is None:
            yield options
            return
        try:
            control_path = held.ready(cancel)
            yield (options if control_path is None else dataclasses.replace(
                options, ssh_control=(endpoint_key(endpoint), control_path)))
        finally:
            self.release(held)

    def acquire(self, endpoint: SshEndpoint, options: EngineOptions, *,
                slot: int | None = None) -> PooledMaster | None:
        """The master for ``endpoint`` (``slot``: one of a long path's separate
        connections to it, ``path.open_slots``) without waiting for it: a warm or
        starting one is shared, else one is started now; its ``ready`` waits. None when
        it cannot start. Every acquire is paired with one ``release``."""
        key = master_argv(endpoint, options, "")
        if slot is not None:
            key = (*key, f"slot {slot}")
        with self._lock:
            start_lock = self._starting.setdefault(key, threading.Lock())
        with start_lock:  # one start per key; other jobs share it
            with self._lock:
                held = self._masters.get(key)
                if held is not None and held.master.alive():
                    held.users += 1
                    return held
                stale = self._masters.pop(key, None)
            if stale is not None:
                self._owner.submit(stale.master.stop)
            master = self._owner.submit(start_master, endpoint, options).result()
            if master is None:
                return None
            held = PooledMaster(master, options.ssh_persist_s, users=1)
            with self._lock:
                self._masters[key] = held
        self._ensure_reaper()
        return held

    def release(self, held: PooledMaster) -> None:
        """This user is done with ``held``: it stays warm ``ssh_persist_s``."""
        with self._lock:
            held.users -= 1
            if held.users == 0:
                held.idle_since = time.monotonic()

    def close(self) -> None:
        """Stop every master now (process exit, tests)."""
        with self._lock:
            masters = list(self._masters.values())
            self._masters.clear()
        for held in masters:
            held.master.stop()

    def count(self) -> int:
        """How many masters the pool holds (tests and status)."""
        with self._lock:
            return len(self._masters)

    def _ensure_reaper(self) -> None:
        with self._lock:
            if self._reaper is not None and self._reaper.is_alive():
                return
            self._reaper = threading.Thread(target=self._reap_forever, daemon=True,
                                            name="ketter-ssh-reaper")
            self._reaper.start()

    def _reap_forever(self) -> None:
        while True:
            time.sleep(_REAP_EVERY_S)
            now = time.monotonic()
            with self._lock:
                done = [k for k, m in self._masters.items()
                        if not m.master.alive()
                        or (m.users == 0 and now - m.idle_since >= m.persist_s)]
                expired = [self._masters.pop(k) for k in done]
                empty = not self._masters
            for held in expired:
                self._owner.submit(held.master.stop)
            if empty:
                with self._lock:
                    if not self._masters:
                        self._reaper = None
                        return


shared_masters = MasterPool()
atexit.register(shared_masters.close)
