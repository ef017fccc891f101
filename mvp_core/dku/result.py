"""One check's outcome, and the wrapper that turns any failure into one."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

_MAX_DETAIL = 400


class Status(str, enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass
class CheckResult:
    """What the report shows for one check: one line for people, ``data`` for machines."""

    name: str
    status: Status
    duration_s: float
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = self.status.value
        out["duration_s"] = round(self.duration_s, 3)
        return out


class CheckFailed(Exception):
    """Raised inside a check to fail it with a reason meant for the operator."""

    def __init__(self, detail: str, **data: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.data = data


@dataclass
class Outcome:
    """What a check function returns when it did not fail."""

    detail: str
    status: Status = Status.OK
    data: dict[str, Any] = field(default_factory=dict)


def one_line(text: str, limit: int = _MAX_DETAIL) -> str:
    """Collapse whitespace so a detail stays one report line; cut long text."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def describe_exception(exc: BaseException) -> str:
    """A dead dependency's reason, without a traceback."""
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error
    message = str(orig) if orig is not None else str(exc)
    return one_line(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)


def run_check(name: str, check: Callable[[], Outcome]) -> CheckResult:
    """Run one check; any exception becomes a failed result with its reason."""
    start = time.monotonic()
    try:
        outcome = check()
    except CheckFailed as exc:
        return CheckResult(
            name, Status.FAIL, time.monotonic() - start, one_line(exc.detail), dict(exc.data)
        )
    except Exception as exc:  # noqa: BLE001 - the DKU reports, it never crashes
        return CheckResult(name, Status.FAIL, time.monotonic() - start, describe_exception(exc))
    return CheckResult(
        name, outcome.status, time.monotonic() - start, one_line(outcome.detail), outcome.data
    )
