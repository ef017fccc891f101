"""The worker's resources, opened in arq's ``on_startup`` and kept in ``ctx["ketter"]``.

Database work runs in threads (``db``) so a slow query never blocks the event
loop that heart-beats; each call is one unit of work that commits on success.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from arq.connections import ArqRedis
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from mvp_core.config import Settings
from mvp_core.db.session import session_scope
from mvp_core.dispatch import site_queue

log = logging.getLogger(__name__)
T = TypeVar("T")


def new_worker_id() -> str:
    """Unique per process start: a restarted worker never inherits a dead one's jobs."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class WorkerState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    redis: ArqRedis
    worker_id: str = field(default_factory=new_worker_id)
    hostname: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    background: list[asyncio.Task[None]] = field(default_factory=list)
    # Job-end webhooks being delivered (``notify``); given a moment at shutdown.
    notifications: set[asyncio.Task[None]] = field(default_factory=set)
    # Jobs this process is running (added before the claim, so never judged orphaned).
    active_jobs: set[int] = field(default_factory=set)
    # This installation's id (``repository.installation_id``), read at start-up.
    installation: str = ""
    # Since when (monotonic) every heartbeat reached Postgres; None after a failed one.
    beats_ok_since: float | None = None
    # arq's poll loop (the task that ran ``on_startup``) and whether Redis answers it:
    # a worker whose loop ended or cannot reach Redis takes no jobs, and says so.
    poll_task: asyncio.Task[object] | None = None
    redis_ok: bool = True
    # Set when Redis answers again after an outage: the reconciler runs at once.
    redis_back: asyncio.Event = field(default_factory=asyncio.Event)
    # The reconciler's place in the PENDING backlog (it walks it a batch per pass).
    reconcile_after_id: int = 0
    # Redis SCAN cursor of the sweep of arq keys left by ended jobs.
    sweep_cursor: int = 0
    # Heartbeats run on their own thread: never behind transfers in the shared pool.
    beat_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="ketter-heartbeat"))

    @property
    def site(self) -> str:
        return self.settings.worker_site

    @property
    def queue_name(self) -> str:
        """The arq queue this worker reads: its site's."""
        return site_queue(self.settings.queue_name, self.settings.worker_site)

    def polling(self) -> bool:
        """Is arq's poll loop alive and reaching Redis?"""
        task = self.poll_task
        return self.redis_ok and (task is None or not task.done())

    def trusts_heartbeats(self) -> bool:
        """Can this worker judge others dead? Only after a full grace period of its own
        heartbeats landing: after a Postgres outage every worker's heartbeat looks stale."""
        since = self.beats_ok_since
        return since is not None and time.monotonic() - since >= self.settings.heartbeat_grace_s

    def unit(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` in one transaction, in the calling thread."""
        with session_scope(self.sessions) as session:
            return fn(session)

    async def db(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` in one transaction, in a thread."""
        return await asyncio.to_thread(self.unit, fn)

    async def db_beat(self, fn: Callable[[Session], T]) -> T:
        """Like ``db``, on the heartbeat's own thread."""
        return await asyncio.get_running_loop().run_in_executor(self.beat_executor, self.unit, fn)

    async def db_persistent(self, fn: Callable[[Session], T], *, what: str) -> T:
        """Like ``db`` but rides out a Postgres restart (~2 min): for writes that must land,
        such as a job's final state."""
        delay = 0.5
        for attempt in range(1, 40):
            try:
                return await self.db(fn)
            except DBAPIError as exc:
                if not exc.connection_invalidated and "connect" not in str(exc.orig).lower():
                    raise
                log.warning("%s: database unreachable (try %d): %s", what, attempt, exc.orig)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 5.0)
        return await self.db(fn)
