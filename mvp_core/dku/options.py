"""What a DKU run needs to know, built once from the settings in ``__main__``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mvp_core.transfer_engine.options import EngineOptions

GIB = 1024**3


@dataclass(frozen=True)
class DkuOptions:
    database_url: str
    redis_url: str
    api_url: str
    api_token: str | None
    engine: EngineOptions
    default_known_hosts: Path | None = None
    # A worker whose newest heartbeat is older than this is dead.
    heartbeat_limit_s: float = 30.0
    # Where the smoke test makes its tree; must be visible to the worker (and the API).
    work_dir: Path | None = None
    smoke_timeout_s: float = 90.0
    http_timeout_s: float = 10.0
    # An ssh portal's base path with less free space than this is a warning.
    min_free_bytes: int = GIB

    def secrets(self) -> tuple[str, ...]:
        """Strings that must never appear in a report (token, database password)."""
        from sqlalchemy import make_url

        found: list[str] = []
        if self.api_token:
            found.append(self.api_token)
        try:
            password = make_url(self.database_url).password
        except Exception:  # noqa: BLE001 - a malformed URL has no password to hide
            password = None
        if password:
            found.append(str(password))
        return tuple(found)
