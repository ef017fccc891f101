"""Ketter settings, read from the environment (prefix ``KETTER_``) at the edges only.

The API dependency, the worker's start-up and the CLI's ``main`` call
``get_settings()`` once and pass values down; the engine never imports this module.

A native install keeps its settings in one file of ``KETTER_X=value`` lines: the file
named by ``KETTER_ENV_FILE``, else ``/etc/ketter/ketter.env`` when it exists. Environment
variables override it. A named file that is missing or unreadable is an error, never a
silent fall-back to the defaults (which would talk to another stack).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.planner import ZipThresholds

MIB = 1024 * 1024


class Settings(BaseSettings):
    """Every tunable of Ketter, one env var each (``KETTER_<NAME>``)."""

    model_config = SettingsConfigDict(
        env_prefix="KETTER_", env_file=None, extra="ignore", env_ignore_empty=True
    )

    # Planner (policy v1 of the design document). The file threshold was 1000 in the seed;
    # the two-host lab measured DIRECT faster on every tree up to 4,800 files
    # (docs/lab_report.md section 5), so auto now goes DIRECT below 10,000.
    zip_threshold_files: int = Field(default=10000, ge=0)
    zip_threshold_avg_size_bytes: int = Field(default=4 * MIB, ge=1)

    # Services.
    database_url: str = "postgresql+psycopg2://postgres@127.0.0.1:5432/ketter"
    redis_url: str = "redis://127.0.0.1:6379/0"
    api_token: str | None = None
    api_url: str = "http://127.0.0.1:8000"

    # Engine.
    temp_dir: Path = Path("/tmp/ketter_tmp")
    remote_temp_dir: str = "/tmp/ketter_tmp"
    ssh_connect_timeout_s: int = Field(default=10, ge=1)
    rsync_io_timeout_s: int = Field(default=120, ge=0)
    # rsync --bwlimit in KiB/s, 0 = unlimited (shared links; tests that interrupt a transfer).
    rsync_bwlimit_kib_s: int = Field(default=0, ge=0)
    default_known_hosts: Path | None = None
    # DIRECT's parallel rsync streams (1 = a single rsync) and ZIP_FIRST's chunk size.
    direct_streams: int = Field(default=4, ge=1, le=8)
    zip_chunk_bytes: int = Field(default=128 * MIB, ge=MIB)
    # Long links: separate ssh connections per job at most, sized to link rate × RTT.
    ssh_max_connections: int = Field(default=8, ge=1, le=32)
    link_mbit: int = Field(default=1000, ge=1)
    # Seconds a worker keeps an ssh connection open after a job, for the next job to the
    # same host (0 = one connection per job, closed with it). Saves the handshake.
    ssh_persist_s: float = Field(default=60.0, ge=0, le=3600)

    # Worker.
    max_attempts: int = Field(default=3, ge=1)
    retry_backoff_s: float = Field(default=5.0, ge=0)
    job_timeout_s: int = Field(default=24 * 3600, ge=1)
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    heartbeat_grace_s: float = Field(default=30.0, gt=0)
    reconcile_interval_s: float = Field(default=15.0, gt=0)
    progress_interval_s: float = Field(default=1.0, gt=0)
    queue_name: str = "ketter:queue"
    # Jobs one worker runs at once. Bounded: each job holds threads of the worker's pool
    # (sized from this), and heartbeats have their own thread so they never wait behind.
    worker_max_jobs: int = Field(default=2, ge=1, le=32)
    # The site (LAB host) this worker serves: it takes the jobs of portals naming this
    # site, from the site's own queue. Default: the host name.
    worker_site: str = Field(default_factory=socket.gethostname, min_length=1, max_length=100,
                             pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    # PENDING jobs the reconciler looks at per pass (it walks a larger backlog in turns).
    reconcile_batch: int = Field(default=500, ge=1, le=10000)
    # A job whose target another job is writing waits this long before trying again.
    target_busy_retry_s: float = Field(default=2.0, gt=0)

    # Job-end notifications (DONE, FAILED, CANCELLED): webhook URLs (comma-separated),
    # the HMAC-SHA256 key of X-Ketter-Signature, and the body's format.
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_format: Literal["json", "slack"] = "json"
    webhook_attempts: int = Field(default=5, ge=1, le=20)
    webhook_backoff_s: float = Field(default=2.0, ge=0)
    webhook_timeout_s: float = Field(default=10.0, gt=0)

    def webhook_urls(self) -> tuple[str, ...]:
        """``KETTER_WEBHOOK_URL`` split on commas, blanks dropped."""
        return tuple(u.strip() for u in (self.webhook_url or "").split(",") if u.strip())

    @field_validator("webhook_url")
    @classmethod
    def _webhook_urls_are_http(cls, value: str | None) -> str | None:
        for url in (u.strip() for u in (value or "").split(",")):
            if url and not url.startswith(("http://", "https://")):
                raise ValueError(f"webhook URL must start with http:// or https://: {url[:80]!r}")
        return value or None

    @field_validator("api_token")
    @classmethod
    def _empty_token_is_none(cls, value: str | None) -> str | None:
        return value or None

    def zip_thresholds(self) -> ZipThresholds:
        """The planner's thresholds, as the pure engine wants them."""
        return ZipThresholds(
            max_files=self.zip_threshold_files,
            max_avg_size_bytes=self.zip_threshold_avg_size_bytes,
        )

    # What verification compares by default (a job may choose): "checksum" hashes every
    # file on both sides; "size" compares names and sizes only (faster, blind to
    # same-size changes). See docs/delivery.md.
    verify: Literal["checksum", "size"] = "checksum"
    # Write an ASC MHL v2.0 generation into ``ascmhl/`` of every delivered folder by
    # default (a job may choose): the receiving side checks it with standard media tools.
    write_mhl: bool = False

    def engine_options(self) -> EngineOptions:
        """Engine knobs, as the pure engine wants them."""
        return EngineOptions(
            temp_dir=self.temp_dir,
            remote_temp_dir=self.remote_temp_dir,
            ssh_connect_timeout_s=self.ssh_connect_timeout_s,
            rsync_io_timeout_s=self.rsync_io_timeout_s,
            bwlimit_kib_s=self.rsync_bwlimit_kib_s,
            direct_streams=self.direct_streams,
            zip_chunk_bytes=self.zip_chunk_bytes,
            ssh_max_connections=self.ssh_max_connections,
            link_bytes_s=self.link_mbit * 1_000_000 // 8,
            ssh_persist_s=self.ssh_persist_s,
            verify=self.verify,
            write_mhl=self.write_mhl,
        )


DEFAULT_ENV_FILE = Path("/etc/ketter/ketter.env")


class ConfigFileError(ValueError):
    """The settings file cannot be used; ``str()`` is one line naming it and why."""


def env_file(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The settings file to read: ``KETTER_ENV_FILE``, else the default when it exists."""
    named = environ.get("KETTER_ENV_FILE", "")
    path = Path(named) if named else DEFAULT_ENV_FILE
    if not named and not path.exists():
        return None
    source = f"KETTER_ENV_FILE={named}" if named else str(path)
    try:
        with path.open(encoding="utf-8") as handle:
            handle.read(1)
    except OSError as exc:
        raise ConfigFileError(f"settings file {source}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"settings file {source}: not UTF-8 text") from exc
    return path


def load_settings() -> Settings:
    """Settings from the settings file (if any) under the environment's ``KETTER_*``."""
    return Settings(_env_file=env_file())  # type: ignore[call-arg]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests override with ``app.dependency_overrides``."""
    return load_settings()
