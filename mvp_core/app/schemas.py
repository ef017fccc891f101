"""Request and response bodies. Requests refuse unknown fields; responses hold no secrets.

A portal's ``identity_file`` is a path on the worker host (a reference), shown
as such; the key itself is never read by the API.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mvp_core.db.models import (
    EventLevel,
    EventType,
    Job,
    JobMode,
    JobStatus,
    OnExisting,
    PortalKind,
    RequestedStrategy,
    VerifyMode,
)
from mvp_core.transfer_engine.endpoints import validate_rsync_path, validate_ssh_name
from mvp_core.transfer_engine.errors import InvalidEndpointError

MAX_ID = 2**31 - 1
PATH_MAX = 4096
URL_MAX = 2048
# A site name: what KETTER_WORKER_SITE accepts (a host name is one).
SITE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


def _no_control(value: str, what: str) -> str:
    """Refuse what Postgres and the filesystem cannot store: NUL, lone surrogates."""
    if "\x00" in value:
        raise ValueError(f"{what} contains a NUL byte")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode text") from None
    return value


def _absolute_clean(value: str, what: str) -> str:
    _no_control(value, what)
    if not value.startswith("/"):
        raise ValueError(f"{what} must be an absolute path")
    if ".." in value.split("/"):
        raise ValueError(f"{what} must not contain '..'")
    return "/" + "/".join(p for p in value.split("/") if p not in ("", "."))


class PortalCreate(BaseModel):
    """A local base path, or an SSH host + base path + key file reference."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, examples=["srvtrf"],
                      description="Unique among portals; how operators refer to it")
    kind: PortalKind = Field(description="local: a path on the worker host; ssh: a host")
    base_path: str = Field(min_length=1, max_length=PATH_MAX, examples=["/srv/incoming"],
                           description="Absolute; job paths are relative to it")
    host: str | None = Field(default=None, min_length=1, max_length=255,
                             examples=["srvtrf.lan"], description="ssh only")
    port: int | None = Field(default=None, ge=1, le=65535, description="ssh only (22)")
    username: str | None = Field(default=None, min_length=1, max_length=64,
                                 examples=["ketter"], description="ssh only")
    identity_file: str | None = Field(
        default=None, min_length=1, max_length=PATH_MAX, examples=["/etc/ketter/id_ed25519"],
        description="ssh only: path of the private key on the worker host (never read here)")
    known_hosts_file: str | None = Field(
        default=None, min_length=1, max_length=PATH_MAX,
        description="ssh only: known_hosts on the worker host, for strict host key checks")
    rsync_path: str | None = Field(
        default=None, min_length=1, max_length=PATH_MAX, examples=["/opt/homebrew/bin/rsync"],
        description="ssh only: the remote rsync when it is not the first on the host's PATH "
                    "(e.g. a Mac's Homebrew rsync); absolute")

    @field_validator("rsync_path")
    @classmethod
    def _rsync_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            validate_rsync_path(value)
        except InvalidEndpointError as exc:
            raise ValueError(str(exc)) from None
        return value
    site: str | None = Field(
        default=None, min_length=1, max_length=100, pattern=SITE_PATTERN, examples=["suite-a"],
        description="The site (LAB host, its workers' KETTER_WORKER_SITE) whose disk a "
                    "local base_path is on; an ssh portal may pin one. Null: any worker")
    max_concurrent_jobs: int | None = Field(
        default=None, ge=1, le=1000,
        description="At most this many jobs read or write the portal at once; more wait "
                    "in order. Null: no limit")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("name must not contain control characters")
        _no_control(value, "name")
        if not value.strip():
            raise ValueError("name must not be blank")
        return value

    @field_validator("base_path")
    @classmethod
    def _base_path(cls, value: str) -> str:
        return _absolute_clean(value, "base_path")

    @field_validator("identity_file", "known_hosts_file")
    @classmethod
    def _key_paths(cls, value: str | None) -> str | None:
        return None if value is None else _absolute_clean(value, "key file path")

    @field_validator("host", "username")
    @classmethod
    def _ssh_names(cls, value: str | None, info: Any) -> str | None:
        if value is None:
            return None
        _no_control(value, info.field_name)
        try:
            validate_ssh_name("user" if info.field_name == "username" else "host", value)
        except InvalidEndpointError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _kind_fields(self) -> PortalCreate:
        if self.kind is PortalKind.SSH and not self.host:
            raise ValueError("an ssh portal needs a host")
        if self.kind is PortalKind.LOCAL and any(
            v is not None
            for v in (self.host, self.port, self.username, self.identity_file,
                      self.known_hosts_file, self.rsync_path)
        ):
            raise ValueError("a local portal takes only name, kind, base_path, site and "
                             "max_concurrent_jobs")
        return self


class PortalUpdate(BaseModel):
    """``PATCH /portals/{id}``: the fields to change; the result must be a valid portal
    (the same rules as at creation). ``null`` clears an optional field."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=100)
    kind: PortalKind | None = None
    base_path: str | None = Field(default=None, min_length=1, max_length=PATH_MAX)
    host: str | None = Field(default=None, min_length=1, max_length=255)
    port: int | None = Field(default=None, ge=1, le=65535)
    username: str | None = Field(default=None, min_length=1, max_length=64)
    identity_file: str | None = Field(default=None, min_length=1, max_length=PATH_MAX)
    known_hosts_file: str | None = Field(default=None, min_length=1, max_length=PATH_MAX)
    rsync_path: str | None = Field(default=None, min_length=1, max_length=PATH_MAX)
    site: str | None = Field(default=None, min_length=1, max_length=100, pattern=SITE_PATTERN)
    max_concurrent_jobs: int | None = Field(default=None, ge=1, le=1000)


class PortalOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    kind: PortalKind
    base_path: str
    host: str | None
    port: int | None
    username: str | None
    identity_file: str | None
    known_hosts_file: str | None
    rsync_path: str | None = None
    site: str | None = None
    max_concurrent_jobs: int | None = None
    created_at: datetime
    warnings: list[str] = Field(
        default_factory=list,
        description="Things worth fixing that do not stop the portal from being stored, "
                    "e.g. a local base_path missing on the API host.")


def _check_url(value: str | None) -> str | None:
    """An http(s) URL with a host: where a job-end webhook is POSTed."""
    if value is None:
        return None
    _no_control(value, "notify_url")
    if any(ord(c) <= 32 or ord(c) == 127 for c in value):
        raise ValueError("notify_url must not contain spaces or control characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("notify_url must be an http:// or https:// URL with a host")
    return value


class JobCreate(BaseModel):
    """Copy or move ``source_path`` (relative to its portal) into ``target_path``.

    The result is ``<target portal>/<target_path>/<basename of source_path>``, which
    appears complete or not at all. ``on_existing`` says what to do when that name
    already exists: ``fail`` (default; refused), ``replace`` (swapped for the new tree
    once it is verified) or ``merge`` (written into, not atomic). See docs/delivery.md.
    """

    model_config = ConfigDict(extra="forbid")

    source_portal_id: int = Field(ge=1, le=MAX_ID)
    source_path: str = Field(min_length=1, max_length=PATH_MAX, examples=["Show 101/Mix v3"],
                             description="A folder or file, relative to the source portal")
    target_portal_id: int = Field(ge=1, le=MAX_ID)
    target_path: str = Field(default="", max_length=PATH_MAX, examples=["deliveries"],
                             description="The directory to deliver into, relative to the "
                                         "target portal ('' = its base)")
    mode: JobMode = Field(default=JobMode.COPY,
                          description="move deletes the source after a verified delivery")
    strategy: RequestedStrategy = Field(
        default=RequestedStrategy.AUTO,
        description="auto lets the planner choose DIRECT (rsync) or ZIP_FIRST (many small "
                    "files)")
    on_existing: OnExisting = Field(
        default=OnExisting.FAIL,
        description="When the output name exists: fail, replace (after verify) or merge")
    notify_url: str | None = Field(
        default=None, max_length=URL_MAX,
        description="POSTed a signed JSON summary when the job ends (DONE, FAILED or "
                    "CANCELLED), besides the server's KETTER_WEBHOOK_URL. Never returned.",
        examples=["https://hooks.example.com/ketter"])
    verify: VerifyMode | None = Field(
        default=None,
        description="checksum: every file's content hash compared on both sides before "
                    "the rename and before a move deletes anything; size: names and sizes "
                    "only. Default: the service's KETTER_VERIFY (checksum).")
    write_mhl: bool | None = Field(
        default=None,
        description="also write an ASC MHL v2.0 receipt into <delivered folder>/ascmhl, "
                    "for standard media tools. Default: the service's KETTER_WRITE_MHL.")

    @field_validator("notify_url")
    @classmethod
    def _notify_url(cls, value: str | None) -> str | None:
        return _check_url(value)


class ManifestFileOut(BaseModel):
    """One delivered file: path relative to the delivered folder, bytes, content hash."""

    path: str
    size: int
    hash: str | None


class ManifestOut(BaseModel):
    """A DONE job's delivery receipt: every delivered file and its content hash."""

    job_id: int
    algorithm: str | None = Field(description="xxh128, sha256 or md5; null: sizes only")
    files: list[ManifestFileOut]


class JobOut(BaseModel):
    """What is true about a job right now. ``phase``, ``files_done``,
    ``speed_bytes_per_s`` and ``eta_s`` are live while RUNNING, null otherwise."""

    id: int
    status: JobStatus
    mode: JobMode
    source_portal_id: int
    source_path: str
    target_portal_id: int
    target_path: str
    requested_strategy: RequestedStrategy
    on_existing: OnExisting
    verify: VerifyMode
    write_mhl: bool
    manifest_algorithm: str | None
    strategy: str | None
    n_files: int
    total_bytes: int
    files_copied: int
    bytes_copied: int
    progress_bytes: int
    progress_percent: float | None
    attempts: int
    cancel_requested: bool
    worker_id: str | None
    error_type: str | None
    error_message: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    throughput_bytes_per_s: float | None
    phase: str | None = Field(
        description="The running phase: zip, send, unzip, verify, deliver, delete_source...")
    files_done: int | None = Field(description="Files done so far in the running phase")
    speed_bytes_per_s: float | None = Field(
        description="The job's speed over the last ~10 s, on the scale of total_bytes")
    eta_s: float | None = Field(description="Seconds left at the current speed")
    site: str | None = Field(default=None,
                             description="The site (LAB host) that runs the job; null: any")
    waiting_reason: str | None = Field(
        default=None,
        description="Why a PENDING job is not running: no live worker at its site, a "
                    "portal at its max_concurrent_jobs, its target busy. Single-job reads "
                    "only (null in lists)")

    @classmethod
    def from_job(cls, job: Job, *, waiting_reason: str | None = None) -> JobOut:
        if job.status is JobStatus.DONE:
            percent: float | None = 100.0
        elif job.total_bytes > 0:
            percent = round(min(100.0, job.progress_bytes * 100.0 / job.total_bytes), 1)
        elif job.status is JobStatus.RUNNING and job.strategy is not None:
            percent = 0.0
        else:
            percent = None
        throughput = (
            job.bytes_copied / job.duration_s
            if job.status is JobStatus.DONE and job.duration_s else None
        )
        running = job.status is JobStatus.RUNNING
        speed = job.speed_bytes_per_s if running else None
        eta = None
        if speed and speed > 0 and job.total_bytes > 0:
            # Counted from the last progress write (rsync reports about once a second),
            # so the ETA keeps counting down between writes; a skewed clock moves it 5 s
            # at most.
            age = min(max((datetime.now(UTC) - job.updated_at).total_seconds(), 0.0), 5.0)
            left = max(job.total_bytes - job.progress_bytes, 0) / speed
            eta = round(max(left - age, 0.0), 1)
        return cls(
            id=job.id,
            status=job.status,
            mode=job.mode,
            source_portal_id=job.source_portal_id,
            source_path=job.source_path,
            target_portal_id=job.target_portal_id,
            target_path=job.target_path,
            requested_strategy=job.requested_strategy,
            on_existing=job.on_existing,
            verify=job.verify,
            write_mhl=job.write_mhl,
            manifest_algorithm=job.manifest_algorithm,
            strategy=job.strategy.value if job.strategy else None,
            n_files=job.n_files,
            total_bytes=job.total_bytes,
            files_copied=job.files_copied,
            bytes_copied=job.bytes_copied,
            progress_bytes=job.progress_bytes,
            progress_percent=percent,
            attempts=job.attempts,
            cancel_requested=job.cancel_requested,
            worker_id=job.worker_id,
            error_type=job.error_type,
            error_message=job.error_message,
            created_at=job.created_at,
            updated_at=job.updated_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            duration_s=job.duration_s,
            throughput_bytes_per_s=throughput,
            phase=job.phase if running else None,
            files_done=job.files_done if running else None,
            speed_bytes_per_s=round(speed, 1) if speed is not None else None,
            eta_s=eta,
            site=job.site,
            waiting_reason=waiting_reason,
        )


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    job_id: int
    created_at: datetime
    level: EventLevel
    event_type: EventType
    message: str
    payload: dict[str, Any]


class ErrorOut(BaseModel):
    """404, 409 and 401 bodies (422s use FastAPI's validation error shape)."""

    detail: str


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for the error codes a route can answer."""
    text = {400: "Body is not parsable JSON", 401: "Missing or wrong API token", 404: "Not found",
            409: "Conflicts with the current state", 503: "Database unavailable"}
    return {code: {"model": ErrorOut, "description": text[code]} for code in codes}


class WorkerHealth(BaseModel):
    id: str
    hostname: str
    pid: int
    site: str | None = None
    heartbeat_age_s: float
    alive: bool = Field(description="Heart-beat within the grace period")
    polling: bool = Field(default=True, description="Its arq poll loop reaches Redis")
    ok: bool = Field(default=False, description="alive and polling: it takes jobs")


class SiteHealth(BaseModel):
    """A site's workers: ``ok`` when at least one takes jobs; ``pending`` jobs wait there."""

    ok: bool
    workers_ok: int
    workers_not_ok: int
    pending: int = 0


class ServiceHealth(BaseModel):
    ok: bool
    error: str | None = None


class HealthOut(BaseModel):
    """``status``: ok (all up), degraded (no live worker), down (DB or Redis unreachable)."""

    status: str
    database: ServiceHealth
    redis: ServiceHealth
    worker_ok: bool
    worker_heartbeat_age_s: float | None
    workers: list[WorkerHealth]
    sites: dict[str, SiteHealth] = Field(
        default_factory=dict,
        description="Per site (KETTER_WORKER_SITE): its workers, and its PENDING jobs. A "
                    "site that PENDING jobs name but no worker serves is listed, not ok")
    jobs_last_24h: dict[str, int] = Field(
        default_factory=dict,
        description="Jobs per status: all PENDING and RUNNING, and those that ended (DONE, "
                    "FAILED, CANCELLED) in the last 24 h; empty when the database is down")
