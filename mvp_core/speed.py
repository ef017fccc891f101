"""A speed people can trust: bytes per second over the last few seconds.

Shared by the worker (the job's ``speed_bytes_per_s``) and the engine CLI's bar.
"""

from __future__ import annotations

from collections import deque

# The window: long enough to smooth rsync's bursts, short enough to follow a link that
# slows down.
SPEED_WINDOW_S = 10.0


class SpeedMeter:
    """Bytes per second over the last ``window_s`` of (time, bytes done) samples.

    Progress that goes back (ZIP_FIRST's stage changes never do on the job's scale, but
    a resumed phase may restart its count) starts the window again.
    """

    def __init__(self, window_s: float = SPEED_WINDOW_S) -> None:
        self.window_s = window_s
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, done: int) -> float | None:
        if self.samples and done < self.samples[-1][1]:
            self.samples.clear()
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window_s:
            self.samples.popleft()
        first_t, first_done = self.samples[0]
        if now - first_t < 0.5:
            return None  # too soon to say
        return max(done - first_done, 0) / (now - first_t)
