"""Sizes, speeds and durations as people read them: ``1.9 GB``, ``2 min 14 s``.

Decimal units (1 GB = 10^9 bytes), as disks and links are sold and as Finder shows them.
"""

from __future__ import annotations

_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1000 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} {_UNITS[-1]}"  # pragma: no cover - the loop always returns


def human_speed(bytes_per_s: float | None) -> str:
    return "-" if bytes_per_s is None else f"{human_bytes(bytes_per_s)}/s"


def human_duration(seconds: float | None) -> str:
    """``0.4 s``, ``42 s``, ``2 min 14 s``, ``3 h 05 min``, ``2 d 4 h``."""
    if seconds is None:
        return "-"
    s = max(float(seconds), 0.0)
    if s < 10:
        return f"{s:.1f} s"
    whole = round(s)
    if whole < 60:
        return f"{whole} s"
    minutes, sec = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"
