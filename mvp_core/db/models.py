"""Ketter's tables: portals, jobs, job_events and workers (heartbeats).

Postgres is the source of truth for every job; Redis only carries work. Rules
that matter (allowed values, non-negative counters, time order) are CHECK
constraints in the database, not only Python.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class PortalKind(str, enum.Enum):
    LOCAL = "local"
    SSH = "ssh"


class JobMode(str, enum.Enum):
    COPY = "copy"
    MOVE = "move"


class RequestedStrategy(str, enum.Enum):
    AUTO = "auto"
    DIRECT = "direct"
    ZIP_FIRST = "zip_first"


class OnExisting(str, enum.Enum):
    """When the job's output name already exists: refuse, swap after verify, or write into."""

    FAIL = "fail"
    REPLACE = "replace"
    MERGE = "merge"


class VerifyMode(str, enum.Enum):
    """What a job's verification compares: content hashes (default) or sizes only."""

    CHECKSUM = "checksum"
    SIZE = "size"


class ChosenStrategy(str, enum.Enum):
    DIRECT = "DIRECT"
    ZIP_FIRST = "ZIP_FIRST"


class JobStatus(str, enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


FINAL_STATUSES = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED})


class EventLevel(str, enum.Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class EventType(str, enum.Enum):
    CREATED = "created"
    QUEUED = "queued"
    STARTED = "started"
    PLAN = "plan"
    PHASE = "phase"
    PROGRESS = "progress"
    RETRY = "retry"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"
    RECOVERED = "recovered"
    NOTIFY = "notify"  # one job-end webhook delivery attempt


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    """A VARCHAR + CHECK enum: portable, and migrations stay plain."""
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


def _now_column() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Portal(Base):
    """A place files live: a local base path, or an SSH host + base path + key reference.

    ``identity_file`` and ``known_hosts_file`` are paths on the worker host; the key
    itself is never stored, returned or logged. A removed portal that ended jobs still
    name keeps its row (``deleted_at``) for their history; its name is free again.
    """

    __tablename__ = "portals"
    __table_args__ = (
        Index("uq_portals_live_name", "name", unique=True,
              postgresql_where=text("deleted_at IS NULL")),
        CheckConstraint("kind <> 'ssh' OR host IS NOT NULL", name="ssh_needs_host"),
        CheckConstraint("port IS NULL OR (port > 0 AND port < 65536)", name="port_range"),
        CheckConstraint("base_path LIKE '/%'", name="base_path_absolute"),
        CheckConstraint("length(name) > 0", name="name_not_empty"),
        CheckConstraint("rsync_path IS NULL OR rsync_path LIKE '/%'", name="rsync_path_absolute"),
        CheckConstraint("max_concurrent_jobs IS NULL OR max_concurrent_jobs > 0",
                        name="max_concurrent_jobs_positive"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    kind: Mapped[PortalKind] = mapped_column(_enum(PortalKind, "portal_kind"), nullable=False)
    host: Mapped[str | None] = mapped_column(String(255))
    port: Mapped[int | None] = mapped_column(Integer)
    username: Mapped[str | None] = mapped_column(String(64))
    base_path: Mapped[str] = mapped_column(Text, nullable=False)
    identity_file: Mapped[str | None] = mapped_column(Text)
    known_hosts_file: Mapped[str | None] = mapped_column(Text)
    # ssh only: the remote rsync when not the first on the host's PATH (a Mac's Homebrew).
    rsync_path: Mapped[str | None] = mapped_column(Text)
    # The site (LAB host) whose disk a local base path is on; an ssh portal may pin one.
    # None: any worker may run its jobs (one-host installs).
    site: Mapped[str | None] = mapped_column(String(100))
    # At most this many RUNNING jobs read or write this portal at once (None: no limit).
    max_concurrent_jobs: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = _now_column()
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )


class Job(Base):
    """One copy or move from a source portal + relative path into a target portal + path."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(
            "n_files >= 0 AND total_bytes >= 0 AND files_copied >= 0 AND bytes_copied >= 0 "
            "AND progress_bytes >= 0 AND attempts >= 0",
            name="counters_non_negative",
        ),
        CheckConstraint(
            "finished_at IS NULL OR started_at IS NULL OR finished_at >= started_at",
            name="finished_after_started",
        ),
        Index("ix_jobs_status_created", "status", "created_at"),
        Index("ix_jobs_status_site_id", "status", "site", "id"),
        # Foreign keys are not indexed by Postgres itself; deleting a portal checks these.
        Index("ix_jobs_source_portal_id", "source_portal_id"),
        Index("ix_jobs_target_portal_id", "target_portal_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mode: Mapped[JobMode] = mapped_column(_enum(JobMode, "job_mode"), nullable=False)
    source_portal_id: Mapped[int] = mapped_column(
        ForeignKey("portals.id", ondelete="RESTRICT"), nullable=False
    )
    source_path: Mapped[str] = mapped_column(Text, nullable=False)
    target_portal_id: Mapped[int] = mapped_column(
        ForeignKey("portals.id", ondelete="RESTRICT"), nullable=False
    )
    target_path: Mapped[str] = mapped_column(Text, nullable=False)
    requested_strategy: Mapped[RequestedStrategy] = mapped_column(
        _enum(RequestedStrategy, "requested_strategy"),
        nullable=False,
        default=RequestedStrategy.AUTO,
        server_default=RequestedStrategy.AUTO.value,
    )
    on_existing: Mapped[OnExisting] = mapped_column(
        _enum(OnExisting, "on_existing"),
        nullable=False,
        default=OnExisting.FAIL,
        server_default=OnExisting.FAIL.value,
    )
    verify: Mapped[VerifyMode] = mapped_column(
        _enum(VerifyMode, "verify"),
        nullable=False,
        default=VerifyMode.CHECKSUM,
        server_default=VerifyMode.CHECKSUM.value,
    )
    # Also write an ASC MHL receipt into the delivered folder (``ascmhl/``).
    write_mhl: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )
    # The hash algorithm of the job's manifest (``job_files``); None: sizes only.
    manifest_algorithm: Mapped[str | None] = mapped_column(String(16))
    strategy: Mapped[ChosenStrategy | None] = mapped_column(_enum(ChosenStrategy, "strategy"))
    status: Mapped[JobStatus] = mapped_column(
        _enum(JobStatus, "job_status"),
        nullable=False,
        default=JobStatus.PENDING,
        server_default=JobStatus.PENDING.value,
    )
    n_files: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    total_bytes: Mapped[int] = mapped_column(
        BigInteger, nullable=False, default=0, server_default="0"
    )
    files_copied: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default="0"
    )
    bytes_copied: Mapped[int] = mapped_column(
        BigInteger, nullable=False, default=0, server_default="0"
    )
    progress_bytes: Mapped[int] = mapped_column(
        BigInteger, nullable=False, default=0, server_default="0"
    )
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    cancel_requested: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )
    worker_id: Mapped[str | None] = mapped_column(String(200))
    # The site that must run the job (from its portals, at submit); None: any site.
    site: Mapped[str | None] = mapped_column(String(100))
    error_type: Mapped[str | None] = mapped_column(String(100))
    error_message: Mapped[str | None] = mapped_column(Text)
    duration_s: Mapped[float | None] = mapped_column(Float)
    # Live, while RUNNING (cleared when the job ends): the phase, files done in it, and
    # the job's speed smoothed over the last ~10 s (on the scale of total_bytes).
    phase: Mapped[str | None] = mapped_column(String(32))
    files_done: Mapped[int | None] = mapped_column(Integer)
    speed_bytes_per_s: Mapped[float | None] = mapped_column(Float)
    # Job-end webhook: this job's own URL (besides KETTER_WEBHOOK_URL), and when the
    # notification was claimed (set once: exactly one notification per ended job).
    notify_url: Mapped[str | None] = mapped_column(Text)
    notified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now_column()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    source_portal: Mapped[Portal] = relationship(foreign_keys=[source_portal_id])
    target_portal: Mapped[Portal] = relationship(foreign_keys=[target_portal_id])
    events: Mapped[list[JobEvent]] = relationship(
        back_populates="job", order_by="JobEvent.id", passive_deletes=True
    )


class JobEvent(Base):
    """One line of a job's history: created, plan, phase, progress, retry, error, done..."""

    __tablename__ = "job_events"
    __table_args__ = (
        Index("ix_job_events_job_id_id", "job_id", "id"),
        CheckConstraint("jsonb_typeof(payload) = 'object'", name="payload_is_object"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False)
    created_at: Mapped[datetime] = _now_column()
    level: Mapped[EventLevel] = mapped_column(
        _enum(EventLevel, "event_level"),
        nullable=False,
        default=EventLevel.INFO,
        server_default=EventLevel.INFO.value,
    )
    event_type: Mapped[EventType] = mapped_column(_enum(EventType, "event_type"), nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False, default="", server_default="")
    payload: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, default=dict, server_default=text("'{}'::jsonb")
    )

    job: Mapped[Job] = relationship(back_populates="events")


class Installation(Base):
    """This Ketter installation's id (one row, made on first use): it is in every
    staging and temp name, so two installations sharing a target never take or sweep
    each other's work."""

    __tablename__ = "installation"
    __table_args__ = (CheckConstraint("one", name="single_row"),)

    one: Mapped[bool] = mapped_column(Boolean, primary_key=True, default=True,
                                      server_default=text("true"))
    id: Mapped[str] = mapped_column(String(32), nullable=False)
    created_at: Mapped[datetime] = _now_column()


class JobFile(Base):
    """One line of a job's delivery receipt: a delivered file, its size, mtime and hash.

    Written once, when the job is DONE; a job of 100,000 files has 100,000 rows."""

    __tablename__ = "job_files"
    __table_args__ = (CheckConstraint("size >= 0", name="size_non_negative"),)

    job_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    path: Mapped[str] = mapped_column(Text, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    hash: Mapped[str | None] = mapped_column(String(128))


class Worker(Base):
    """A worker process's heartbeat: the reconciler trusts this, not Redis keys."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255), nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    site: Mapped[str | None] = mapped_column(String(100))
    # Its arq poll loop reaches Redis: a worker that heart-beats but cannot take jobs is
    # not ok (``/health``), and the API does not route jobs to its site.
    polling: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True,
                                          server_default=text("true"))
    started_at: Mapped[datetime] = _now_column()
    last_heartbeat_at: Mapped[datetime] = _now_column()
