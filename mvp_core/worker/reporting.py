"""Engine callbacks that write to Postgres: throttled progress and phase events.

Both are called from the engine's thread, so they write synchronously there;
a failed write is logged and never breaks the transfer.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from mvp_core.db import repository as repo
from mvp_core.db.models import EventLevel, EventType
from mvp_core.speed import SpeedMeter
from mvp_core.transfer_engine.planner import TransferStrategy
from mvp_core.transfer_engine.results import PhaseEvent, Progress
from mvp_core.worker.state import WorkerState

log = logging.getLogger(__name__)

# ZIP_FIRST reports each phase from 0 to its total; a job's percent spans all three.
_ZIP_FIRST_PHASES = ("zip", "send", "unzip")
# One ``progress`` event per this many progress writes (5 s at the default 1 s).
PROGRESS_EVENT_EVERY = 5
def overall_bytes(strategy: TransferStrategy, progress: Progress, total_bytes: int) -> int:
    """Bytes of the whole job done, on the scale of the source's total bytes."""
    fraction = progress.bytes_done / progress.bytes_total if progress.bytes_total > 0 else 0.0
    fraction = min(max(fraction, 0.0), 1.0)
    if strategy is TransferStrategy.ZIP_FIRST and progress.phase in _ZIP_FIRST_PHASES:
        index = _ZIP_FIRST_PHASES.index(progress.phase)
        fraction = (index + fraction) / len(_ZIP_FIRST_PHASES)
    elif total_bytes <= 0:
        return max(progress.bytes_done, 0)
    return int(total_bytes * fraction)


class ProgressWriter:
    """``progress_bytes`` at most every ``interval_s``; a ``progress`` event now and then."""

    def __init__(
        self, state: WorkerState, job_id: int, *, strategy: TransferStrategy, total_bytes: int
    ) -> None:
        self.state = state
        self.job_id = job_id
        self.strategy = strategy
        self.total_bytes = total_bytes
        self.interval_s = state.settings.progress_interval_s
        self.event_every_s = PROGRESS_EVENT_EVERY * self.interval_s
        self._last_write = 0.0
        self._last_event = time.monotonic()
        self.speed = SpeedMeter()
        # What earlier attempts got done (read at the first write; None until then).
        self.resumed: int | None = None

    def _job_bytes(self, progress: Progress) -> int:
        """This attempt's progress on the job's scale, counting what earlier attempts
        left in the staging dir: DIRECT's rsync reports only the bytes it sends now, so
        they add up; ZIP_FIRST already counts the chunks it skips, so it never dips."""
        done = overall_bytes(self.strategy, progress, self.total_bytes)
        resumed = self.resumed or 0
        if self.strategy is TransferStrategy.ZIP_FIRST:
            return max(done, resumed)
        total = self.total_bytes or (resumed + done)
        return min(resumed + done, total)

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if now - self._last_write < self.interval_s:
            return
        self._last_write = now
        with_event = now - self._last_event >= self.event_every_s
        if with_event:
            self._last_event = now
        try:
            self.state.unit(lambda s: self._write(s, progress, now, with_event))
        except Exception as exc:  # noqa: BLE001 - progress is never worth failing a transfer
            log.warning("job %s: progress not recorded: %s", self.job_id, exc)

    def _write(self, session: Any, progress: Progress, now: float, with_event: bool) -> None:
        if self.resumed is None:
            self.resumed = repo.resumed_progress(session, job_id=self.job_id)
            if self.resumed:
                share = (f" ({100.0 * self.resumed / self.total_bytes:.0f} %)"
                         if self.total_bytes else "")
                repo.add_event(
                    session, job_id=self.job_id, event_type=EventType.PROGRESS,
                    message=f"resuming: {self.resumed} bytes{share} were done by earlier "
                            "attempts and are kept in the staging directory",
                    payload={"resumed_bytes": self.resumed, "bytes_total": self.total_bytes})
        done = self._job_bytes(progress)
        speed = self.speed.add(now, done)
        repo.record_progress(session, job_id=self.job_id, progress_bytes=done,
                             phase=progress.phase, files_done=progress.files_done,
                             speed_bytes_per_s=speed)
        if with_event:
            percent = round(100.0 * done / self.total_bytes, 1) if self.total_bytes else None
            repo.add_event(
                session, job_id=self.job_id, event_type=EventType.PROGRESS,
                message=f"{progress.phase}: {progress.bytes_done}/{progress.bytes_total} bytes",
                payload={
                    "phase": progress.phase,
                    "bytes_done": progress.bytes_done,
                    "bytes_total": progress.bytes_total,
                    "files_done": progress.files_done,
                    "files_total": progress.files_total,
                    "job_progress_bytes": done,
                    "percent": percent,
                    "speed_bytes_per_s": round(speed, 1) if speed is not None else None,
                },
            )


class PhaseWriter:
    """One ``phase`` event per engine phase start/end, with its duration."""

    def __init__(self, state: WorkerState, job_id: int) -> None:
        self.state = state
        self.job_id = job_id

    def __call__(self, event: PhaseEvent) -> None:
        duration = f" in {event.duration_s:.2f}s" if event.duration_s is not None else ""
        payload: dict[str, Any] = {
            "phase": event.phase,
            "status": event.status,
            "duration_s": event.duration_s,
            "details": _jsonable(event.details),
        }
        level = EventLevel.WARNING if event.status == "failed" else EventLevel.INFO

        def write(s: Any) -> None:
            if event.status == "started":
                repo.record_phase(s, job_id=self.job_id, phase=event.phase)
            repo.add_event(
                s, job_id=self.job_id, event_type=EventType.PHASE, level=level,
                message=f"{event.phase} {event.status}{duration}", payload=payload,
            )

        try:
            self.state.unit(write)
        except Exception as exc:  # noqa: BLE001 - an event is never worth failing a transfer
            log.warning("job %s: phase event not recorded: %s", self.job_id, exc)


def _jsonable(value: Any) -> Any:
    """Engine details as JSON (paths and other objects become strings)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
