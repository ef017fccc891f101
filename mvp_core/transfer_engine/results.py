"""What a transfer reports back: results, progress and phase events.

Callbacks are ``Protocol``s so the worker (DB writes) and the CLI (a progress
line) plug in without the engine knowing either.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from mvp_core.transfer_engine.planner import TransferStrategy


@dataclass(frozen=True)
class Progress:
    """Bytes done out of total for the current phase (``phase``: zip, send, ...)."""

    phase: str
    bytes_done: int
    bytes_total: int
    files_done: int | None = None
    files_total: int | None = None


class ProgressCallback(Protocol):
    def __call__(self, progress: Progress) -> None: ...


@dataclass(frozen=True)
class PhaseEvent:
    """A phase that started or ended (``zip``, ``send``, ``unzip``, ``verify``, ``cleanup``,
    ``delete_source``), with its duration once ended and any details worth logging."""

    phase: str
    status: str  # "started" | "done" | "failed" | "skipped" (see PhaseSkipped)
    duration_s: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


class PhaseSkipped(Exception):
    """Raised out of a phase that turned out not to be the right step yet (DIRECT's
    guarded send finding the target not fresh): the phase ends ``skipped``, not
    ``failed``, and the caller takes another way."""


class PhaseCallback(Protocol):
    def __call__(self, event: PhaseEvent) -> None: ...


class CancelToken:
    """Set from another thread to stop the running transfer; the runner polls it.

    ``parent``: a token that also counts as cancelled when its parent is (DIRECT's
    streams: the job's cancel stops them all, a failed stream stops only its siblings).
    """

    def __init__(self, parent: CancelToken | None = None) -> None:
        self._event = threading.Event()
        self._parent = parent
        self._resumable = False

    def cancel(self) -> None:
        self._event.set()

    def interrupt(self) -> None:
        """Stop, but keep what was staged: the job will run again and resume (a graceful
        worker shutdown), unlike a user's cancel, which discards it."""
        self._resumable = True
        self._event.set()

    @property
    def resumable(self) -> bool:
        """Stopped by ``interrupt``: the staging directory stays for the next attempt."""
        return self._resumable or (self._parent is not None and self._parent.resumable)

    @property
    def cancelled(self) -> bool:
        return self._event.is_set() or (self._parent is not None and self._parent.cancelled)

    def wait(self, timeout: float) -> bool:
        if self._parent is None:
            return self._event.wait(timeout)
        deadline = time.monotonic() + timeout
        while not self.cancelled:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._event.wait(min(left, 0.05))
        return True


@dataclass(frozen=True)
class DeliveredFile:
    """One line of a job's manifest: relative path, size, mtime (ns) and content hash."""

    path: str
    size: int
    mtime_ns: int | None
    hash: str | None


@dataclass(frozen=True)
class TransferResult:
    strategy: TransferStrategy
    files_transferred: int
    bytes_transferred: int
    duration_s: float
    phase_timings: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    # DIRECT: how many rsync streams carried the files (0: nothing was sent, an earlier
    # attempt had already delivered the tree). ZIP_FIRST: 1.
    streams: int = 1
    # The path (``path``): ssh connections the send used (0: a local job, or nothing
    # sent), the round trip measured (None: not measured, a small or local job) and the
    # send's achieved rate in bytes/s.
    connections: int = 0
    rtt_s: float | None = None
    send_rate_bytes_s: float | None = None
    # The delivery receipt: every delivered file with its size, mtime and content hash
    # (empty with verify=size), and the hash algorithm used (None: sizes only).
    files: tuple[DeliveredFile, ...] = ()
    algorithm: str | None = None

    @property
    def throughput_bytes_per_s(self) -> float:
        return self.bytes_transferred / self.duration_s if self.duration_s > 0 else 0.0
