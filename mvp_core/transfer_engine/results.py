"""What a transfer reports back: results, progress and phase events.

Callbacks are ``Protocol``s so the worker (DB writes) and the CLI (a progress
line) plug in without the engine knowing either.
"""

from __future__ import annotations

import threading
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
    status: str  # "started" | "done" | "failed"
    duration_s: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


class PhaseCallback(Protocol):
    def __call__(self, event: PhaseEvent) -> None: ...


class CancelToken:
    """Set from another thread to stop the running transfer; the runner polls it."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)


@dataclass(frozen=True)
class TransferResult:
    strategy: TransferStrategy
    files_transferred: int
    bytes_transferred: int
    duration_s: float
    phase_timings: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def throughput_bytes_per_s(self) -> float:
        return self.bytes_transferred / self.duration_s if self.duration_s > 0 else 0.0
