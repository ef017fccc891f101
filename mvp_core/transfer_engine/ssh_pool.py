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
never the shared master.
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
class _Master:
    """One warm master: its users and when it was last released."""

    master: Master
    persist_s: float
    users: int = 0
    idle_since: float = 0.0

    @property
    def control_path(self) -> str:
        return self.master.control_path

    def alive(self) -> bool:
        return self.master.alive()


class MasterPool:
    """Masters keyed by everything that makes an ssh connection (host, port, user,
    identity, known_hosts, timeouts); one per key, shared by concurrent jobs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._masters: dict[tuple[str, ...], _Master] = {}
        self._starting: dict[tuple[str, ...], threading.Lock] = {}
        self._owner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ketter-ssh-pool")
        self._reaper: threading.Thread | None = None
        self._closed = False

    @contextmanager
    def session(self, endpoint: SshEndpoint, options: EngineOptions,
                cancel: CancelToken | None = None) -> Iterator[EngineOptions]:
        """Run the block over the pool's master for ``endpoint`` (started if needed)."""
        master = self.acquire(endpoint, options, cancel)
        if master is None:
            yield options
            return
        try:
            yield dataclasses.replace(
                options, ssh_control=(endpoint_key(endpoint), master.control_path))
        finally:
            self.release(master)

    def acquire(self, endpoint: SshEndpoint, options: EngineOptions,
                cancel: CancelToken | None = None, *, slot: int | None = None
                ) -> _Master | None:
        """The warm master for ``endpoint`` (``slot``: one of a long path's separate
        connections to it, ``path.open_slots``), started and waited for if needed; None
        when it cannot start. Every acquire is paired with one ``release``."""
        key = master_argv(endpoint, options, "")
        if slot is not None:
            key = (*key, f"slot {slot}")
        return self._acquire(key, endpoint, options, cancel)

    def release(self, master: _Master) -> None:
        """This user is done with ``master``: it stays warm ``ssh_persist_s``."""
        with self._lock:
            master.users -= 1
            if master.users == 0:
                master.idle_since = time.monotonic()

    def close(self) -> None:
        """Stop every master now (process exit, tests)."""
        with self._lock:
            masters = list(self._masters.values())
            self._masters.clear()
        for master in masters:
            _stop(master)

    def count(self) -> int:
        """How many masters the pool holds (tests and status)."""
        with self._lock:
            return len(self._masters)

    def _acquire(self, key: tuple[str, ...], endpoint: SshEndpoint,
                 options: EngineOptions, cancel: CancelToken | None) -> _Master | None:
        with self._lock:
            start_lock = self._starting.setdefault(key, threading.Lock())
        with start_lock:  # one start per key; other jobs wait for it and share it
            with self._lock:
                master = self._masters.get(key)
                if master is not None and master.alive():
                    master.users += 1
                    return master
                stale = self._masters.pop(key, None)
            if stale is not None:
                self._owner.submit(_stop, stale)
            master = self._start(endpoint, options, cancel)
            if master is None:
                return None
            with self._lock:
                master.users = 1
                self._masters[key] = master
            self._ensure_reaper()
            return master

    def _start(self, endpoint: SshEndpoint, options: EngineOptions,
               cancel: CancelToken | None) -> _Master | None:
        master = self._owner.submit(start_master, endpoint, options).result()
        if master is None:
            return None
        if master.ready(cancel) is not None:
            return _Master(master, options.ssh_persist_s)
        self._owner.submit(master.stop)
        return None

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
                        if not m.alive()
                        or (m.users == 0 and now - m.idle_since >= m.persist_s)]
                expired = [self._masters.pop(k) for k in done]
                empty = not self._masters
            for master in expired:
                self._owner.submit(_stop, master)
            if empty:
                with self._lock:
                    if not self._masters:
                        self._reaper = None
                        return


def _stop(master: _Master) -> None:
    master.master.stop()


shared_masters = MasterPool()
atexit.register(shared_masters.close)
