"""Data access shared by the API and the worker: one function per thing a caller needs.

Every function takes the session first and keyword-only arguments after it, and
never commits: the caller owns the unit of work (a request, or one worker step).
State changes that can race (claim, cancel, recovery) are single conditional
UPDATEs, so Postgres, not Python, decides who wins.

Errors a caller may show to a user are the three below; the API maps them to
404, 409 and 422 in one exception handler.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, delete, exists, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from mvp_core.db.models import (
    FINAL_STATUSES,
    ChosenStrategy,
    EventLevel,
    EventType,
    Installation,
    Job,
    JobEvent,
    JobFile,
    JobMode,
    JobStatus,
    OnExisting,
    Portal,
    PortalKind,
    RequestedStrategy,
    VerifyMode,
    Worker,
)


def _rowcount(result: Any) -> int:
    """Rows an UPDATE/DELETE touched (``Session.execute`` is typed as a plain Result)."""
    return int(getattr(result, "rowcount", 0) or 0)


class NotFoundError(LookupError):
    """The portal or job does not exist (HTTP 404)."""


class ConflictError(Exception):
    """The request clashes with the current state, e.g. deleting a used portal (HTTP 409)."""


class InvalidRequestError(ValueError):
    """The request is well-formed but refers to something unusable (HTTP 422).

    ``field``: the request field at fault, when known (the 422 points at it).
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# --------------------------------------------------------------------------- portals


def create_portal(
    session: Session,
    *,
    name: str,
    kind: PortalKind,
    base_path: str,
    host: str | None = None,
    port: int | None = None,
    username: str | None = None,
    identity_file: str | None = None,
    known_hosts_file: str | None = None,
    rsync_path: str | None = None,
    site: str | None = None,
    max_concurrent_jobs: int | None = None,
) -> Portal:
    """Insert a portal (validated by the caller); a duplicate name is a conflict."""
    _check_name_free(session, name)
    portal = Portal(
        name=name,
        kind=kind,
        base_path=base_path,
        host=host,
        port=port,
        username=username,
        identity_file=identity_file,
        known_hosts_file=known_hosts_file,
        rsync_path=rsync_path,
        site=site,
        max_concurrent_jobs=max_concurrent_jobs,
    )
    session.add(portal)
    session.flush()
    return portal


def _check_name_free(session: Session, name: str, *, other_than: int | None = None) -> None:
    """Portal names are unique among live portals (a removed one frees its name)."""
    clash = exists().where(Portal.name == name, Portal.deleted_at.is_(None))
    if other_than is not None:
        clash = clash.where(Portal.id != other_than)
    if session.scalar(select(clash)):
        raise ConflictError(f"a portal named {name!r} already exists")


def get_portal(session: Session, *, portal_id: int, for_update: bool = False) -> Portal:
    """A live portal (a removed one is not found: new jobs cannot use it)."""
    portal = session.get(Portal, portal_id, with_for_update=for_update)
    if portal is None or portal.deleted_at is not None:
        raise NotFoundError(f"portal {portal_id} not found")
    return portal


# The DKU's smoke portals (mvp_core/dku/smoke.py) are named with this prefix; listings
# hide them and their jobs unless asked, so health checks do not clutter the operator's lists.
DKU_PORTAL_PREFIX = "dku-smoke-"


def _not_dku(column: Any) -> Any:
    return ~column.startswith(DKU_PORTAL_PREFIX, autoescape=True)


def list_portals(session: Session, *, include_dku: bool = True) -> Sequence[Portal]:
    query = select(Portal).where(Portal.deleted_at.is_(None)).order_by(Portal.id)
    if not include_dku:
        query = query.where(_not_dku(Portal.name))
    return session.scalars(query).all()


def update_portal(session: Session, *, portal_id: int, values: dict[str, Any]) -> Portal:
    """Change a portal's fields (validated by the caller as a whole portal).

    Jobs that have not started yet pick the new values up; running ones keep what they
    loaded at their start.
    """
    portal = get_portal(session, portal_id=portal_id, for_update=True)
    if "name" in values and values["name"] != portal.name:
        _check_name_free(session, values["name"], other_than=portal_id)
    for key, value in values.items():
        setattr(portal, key, value)
    session.flush()
    session.refresh(portal)
    return portal


def delete_portal(session: Session, *, portal_id: int) -> bool:
    """Remove a portal no unfinished job uses (409 otherwise).

    A portal that ended jobs name is kept for their history (``deleted_at``), hidden
    from lists and refused to new jobs; one no job ever named is deleted. Returns True
    when the row was kept.
    """
    portal = get_portal(session, portal_id=portal_id, for_update=True)
    uses = or_(Job.source_portal_id == portal_id, Job.target_portal_id == portal_id)
    unfinished = session.scalar(
        select(func.count(Job.id)).where(uses, Job.status.not_in(list(FINAL_STATUSES)))
    )
    if unfinished:
        raise ConflictError(
            f"portal {portal_id} is used by {unfinished} unfinished job(s); "
            "cancel them or wait until they end")
    if session.scalar(select(exists().where(uses))):
        portal.deleted_at = func.now()
        session.flush()
        return True
    session.delete(portal)
    session.flush()
    return False


# --------------------------------------------------------------------------- jobs


def create_job(
    session: Session,
    *,
    mode: JobMode,
    source_portal_id: int,
    source_path: str,
    target_portal_id: int,
    target_path: str,
    requested_strategy: RequestedStrategy,
    on_existing: OnExisting = OnExisting.FAIL,
    verify: VerifyMode = VerifyMode.CHECKSUM,
    write_mhl: bool = False,
    notify_url: str | None = None,
    site: str | None = None,
) -> Job:
    """Insert a PENDING job with its ``created`` and ``queued`` events."""
    job = Job(
        mode=mode,
        site=site,
        notify_url=notify_url,
        on_existing=on_existing,
        verify=verify,
        write_mhl=write_mhl,
        source_portal_id=source_portal_id,
        source_path=source_path,
        target_portal_id=target_portal_id,
        target_path=target_path,
        requested_strategy=requested_strategy,
        status=JobStatus.PENDING,
    )
    session.add(job)
    session.flush()
    add_event(
        session,
        job_id=job.id,
        event_type=EventType.CREATED,
        message=f"{mode.value} {source_path!r} -> {target_path!r}",
        payload={
            "mode": mode.value,
            "source_portal_id": source_portal_id,
            "source_path": source_path,
            "target_portal_id": target_portal_id,
            "target_path": target_path,
            "requested_strategy": requested_strategy.value,
            "on_existing": on_existing.value,
            "verify": verify.value,
            "write_mhl": write_mhl,
            "site": site,
        },
    )
    add_event(session, job_id=job.id, event_type=EventType.QUEUED, message="handed to the queue")
    return job


def get_job(session: Session, *, job_id: int, for_update: bool = False) -> Job:
    job = session.get(Job, job_id, with_for_update=for_update, populate_existing=for_update)
    if job is None:
        raise NotFoundError(f"job {job_id} not found")
    return job


def list_jobs(
    session: Session,
    *,
    status: JobStatus | None = None,
    limit: int = 50,
    offset: int = 0,
    include_dku: bool = True,
) -> Sequence[Job]:
    """Newest first; ``include_dku=False`` leaves out jobs from or to a DKU smoke portal."""
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset)
    if status is not None:
        query = query.where(Job.status == status)
    if not include_dku:
        dku = select(Portal.id).where(~_not_dku(Portal.name))
        query = query.where(Job.source_portal_id.not_in(dku), Job.target_portal_id.not_in(dku))
    return session.scalars(query).all()


def add_event(
    session: Session,
    *,
    job_id: int,
    event_type: EventType,
    message: str = "",
    payload: dict[str, Any] | None = None,
    level: EventLevel = EventLevel.INFO,
) -> JobEvent:
    event = JobEvent(
        job_id=job_id, event_type=event_type, message=message, payload=payload or {}, level=level
    )
    session.add(event)
    session.flush()
    return event


def list_events(
    session: Session,
    *,
    job_id: int,
    event_type: EventType | None = None,
    after_id: int = 0,
    limit: int = 1000,
) -> Sequence[JobEvent]:
    get_job(session, job_id=job_id)
    query = (
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.id > after_id)
        .order_by(JobEvent.id)
        .limit(limit)
    )
    if event_type is not None:
        query = query.where(JobEvent.event_type == event_type)
    return session.scalars(query).all()


def last_event(session: Session, *, job_id: int) -> JobEvent | None:
    return session.scalar(
        select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id.desc()).limit(1)
    )


def request_cancel(session: Session, *, job_id: int) -> Job:
    """Cancel a job: a PENDING one ends CANCELLED at once; a RUNNING one is flagged for its worker.

    The row lock orders this against the worker's claim, so a PENDING job
    cancelled here can never start.
    """
    job = get_job(session, job_id=job_id, for_update=True)
    if job.status is JobStatus.CANCELLED:
        return job
    if job.status in FINAL_STATUSES:
        raise ConflictError(f"job {job_id} already ended {job.status.value}")
    job.cancel_requested = True
    if job.status is JobStatus.PENDING:
        job.status = JobStatus.CANCELLED
        job.finished_at = func.now()
        add_event(
            session,
            job_id=job_id,
            event_type=EventType.CANCELLED,
            message="cancelled before it started" if job.attempts == 0
            else "cancelled while waiting for its next attempt",
            payload={"attempts": job.attempts},
        )
    session.flush()
    session.refresh(job)
    return job


# --------------------------------------------------------------------------- worker side

# A job's live numbers, cleared when an attempt starts and when the job ends.
_NOT_LIVE: dict[str, Any] = {"phase": None, "files_done": None, "speed_bytes_per_s": None}


def _live_worker(worker_id_column: Any, grace_s: float) -> Any:
    """SQL: the given worker heart-beat within the last ``grace_s`` seconds."""
    return exists().where(
        Worker.id == worker_id_column,
        Worker.last_heartbeat_at > func.now() - func.make_interval(0, 0, 0, 0, 0, 0, grace_s),
    )


def worker_alive(session: Session, *, worker_id: str | None, grace_s: float) -> bool:
    """True when ``worker_id`` heart-beat within the last ``grace_s`` seconds."""
    if worker_id is None:
        return False
    return bool(session.scalar(select(_live_worker(worker_id, grace_s))))


@dataclass(frozen=True)
class Claim:
    """What a successful claim tells the worker."""

    attempts: int
    previous_worker_id: str | None


def claim_job(session: Session, *, job_id: int, worker_id: str, grace_s: float) -> Claim | None:
    """Atomically make a job RUNNING on this worker, or return None if it is not ours to run.

    Claimable: PENDING, or RUNNING on a worker whose heartbeat is older than
    ``grace_s`` (it died). Never a job whose cancel was requested.
    """
    previous = session.execute(
        select(Job.worker_id, Job.status).where(Job.id == job_id).with_for_update()
    ).first()
    if previous is None:
        return None
    row = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.cancel_requested.is_(False),
            or_(
                Job.status == JobStatus.PENDING,
                and_(
                    Job.status == JobStatus.RUNNING,
                    or_(Job.worker_id.is_(None), ~_live_worker(Job.worker_id, grace_s)),
                ),
            ),
        )
        .values(
            status=JobStatus.RUNNING,
            worker_id=worker_id,
            # The claim's own moment, not its transaction's start: a job that waited
            # for another to end starts after that job's finished_at.
            started_at=func.coalesce(Job.started_at, func.clock_timestamp()),
            attempts=Job.attempts + 1,
            error_type=None,
            error_message=None,
            updated_at=func.now(),
            **_NOT_LIVE,
        )
        .returning(Job.attempts)
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        return None
    taken_from = previous.worker_id if previous.status == JobStatus.RUNNING else None
    return Claim(attempts=row.attempts, previous_worker_id=taken_from)


def record_plan(
    session: Session,
    *,
    job_id: int,
    strategy: ChosenStrategy,
    n_files: int | None,
    total_bytes: int | None,
    summary: dict[str, Any],
) -> None:
    """The attempt's plan. A retry keeps the progress earlier attempts made (they left
    it in the staging dir; the worker adds the new attempt's bytes to it), so the job
    does not fall back to 0 %."""
    total = total_bytes or 0
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(
            strategy=strategy,
            n_files=n_files or 0,
            total_bytes=total,
            progress_bytes=case((Job.attempts > 1, func.least(Job.progress_bytes, total)),
                                else_=0),
            updated_at=func.now(),
        )
        .execution_options(synchronize_session=False)
    )
    add_event(
        session,
        job_id=job_id,
        event_type=EventType.PLAN,
        message=f"strategy={strategy.value}: {summary.get('reason', '')}",
        payload=summary,
    )


def record_progress(
    session: Session,
    *,
    job_id: int,
    progress_bytes: int,
    phase: str | None = None,
    files_done: int | None = None,
    speed_bytes_per_s: float | None = None,
) -> None:
    """A RUNNING job's live numbers (``progress_bytes`` on the scale of ``total_bytes``)."""
    values: dict[str, Any] = {"progress_bytes": max(progress_bytes, 0),
                              "files_done": files_done, "speed_bytes_per_s": speed_bytes_per_s,
                              "updated_at": func.now()}
    if phase is not None:
        values["phase"] = phase[:32]
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


def resumed_progress(session: Session, *, job_id: int) -> int:
    """Bytes earlier attempts of this job got done (0 on a first attempt)."""
    row = session.execute(
        select(Job.attempts, Job.progress_bytes).where(Job.id == job_id)
    ).first()
    return int(row.progress_bytes) if row is not None and row.attempts > 1 else 0


def record_phase(session: Session, *, job_id: int, phase: str) -> None:
    """The phase a RUNNING job just entered (verify, deliver, delete_source...)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
        .values(phase=phase[:32])
        .execution_options(synchronize_session=False)
    )


def claim_notification(session: Session, *, job_id: int) -> Job | None:
    """The ended job, if its job-end notification is still to be sent (then it is ours:
    set once, so exactly one notification per ended job); else None."""
    claimed = session.scalar(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(list(FINAL_STATUSES)),
               Job.notified_at.is_(None))
        .values(notified_at=func.now())
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )
    if claimed is None:
        return None
    return get_job(session, job_id=job_id, for_update=True)


def cancel_requested(session: Session, *, job_id: int) -> bool:
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def finish_job(
    session: Session,
    *,
    job_id: int,
    worker_id: str,
    status: JobStatus,
    event_type: EventType,
    message: str,
    payload: dict[str, Any] | None = None,
    level: EventLevel = EventLevel.INFO,
    files_copied: int | None = None,
    bytes_copied: int | None = None,
    duration_s: float | None = None,
    error_type: str | None = None,
    error_message: str | None = None,
) -> bool:
    """End a RUNNING job this worker owns; False if it was taken away (recovered elsewhere)."""
    values: dict[str, Any] = {
        "status": status,
        "finished_at": func.greatest(func.now(), Job.started_at),
        "updated_at": func.now(),
        "error_type": error_type,
        "error_message": error_message,
        **_NOT_LIVE,
    }
    if files_copied is not None:
        values["files_copied"] = files_copied
    if bytes_copied is not None:
        values["bytes_copied"] = bytes_copied
        values["progress_bytes"] = func.greatest(Job.total_bytes, bytes_copied)
    if duration_s is not None:
        values["duration_s"] = duration_s
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.worker_id == worker_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(result) != 1:
        return False
    add_event(
        session, job_id=job_id, event_type=event_type, message=message, payload=payload,
        level=level,
    )
    return True


def installation_id(session: Session) -> str:
    """This installation's id: read, or made once (8 hex digits; concurrent first
    callers agree, the row is single)."""
    session.execute(insert(Installation).values(one=True, id=secrets.token_hex(4))
                    .on_conflict_do_nothing())
    return str(session.scalar(select(Installation.id)))


@dataclass(frozen=True)
class ManifestLine:
    """One delivered file, as the worker hands it over (see ``record_manifest``)."""

    path: str
    size: int
    mtime_ns: int | None
    hash: str | None


_MANIFEST_BATCH = 5000


def record_manifest(session: Session, *, job_id: int, algorithm: str | None,
                    files: Sequence[ManifestLine]) -> None:
    """Store a job's delivery receipt (replacing any earlier one). Names that are not
    valid UTF-8 are kept readable with backslash escapes (Postgres text is UTF-8)."""
    session.execute(delete(JobFile).where(JobFile.job_id == job_id))
    session.execute(update(Job).where(Job.id == job_id).values(manifest_algorithm=algorithm))
    rows = [{"job_id": job_id, "path": _storable(f.path), "size": f.size,
             "mtime_ns": f.mtime_ns, "hash": f.hash} for f in files]
    for start in range(0, len(rows), _MANIFEST_BATCH):
        session.execute(insert(JobFile).on_conflict_do_nothing(),
                        rows[start:start + _MANIFEST_BATCH])


def _storable(path: str) -> str:
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def job_manifest(session: Session, *, job_id: int) -> tuple[Job, list[JobFile]]:
    """A job and its manifest lines in path order; ``NotFoundError`` for an unknown job."""
    job = get_job(session, job_id=job_id)
    files = list(session.scalars(select(JobFile).where(JobFile.job_id == job_id)
                                 .order_by(JobFile.path)))
    return job, files


def release_for_retry(
    session: Session,
    *,
    job_id: int,
    worker_id: str,
    message: str,
    payload: dict[str, Any],
    error_type: str | None = None,
    error_message: str | None = None,
) -> bool:
    """Put a RUNNING job back to PENDING between attempts, with a ``retry`` event."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.worker_id == worker_id)
        .values(
            status=JobStatus.PENDING,
            worker_id=None,
            updated_at=func.now(),
            error_type=error_type,
            error_message=error_message,
        )
        .execution_options(synchronize_session=False)
    )
    if _rowcount(result) != 1:
        return False
    add_event(
        session, job_id=job_id, event_type=EventType.RETRY, message=message, payload=payload,
        level=EventLevel.WARNING,
    )
    return True


def cancel_unclaimed(session: Session, *, job_id: int, message: str) -> bool:
    """End a job whose cancel was requested but that no live worker is running."""
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.cancel_requested.is_(True),
            Job.status.in_([JobStatus.PENDING, JobStatus.RUNNING]),
        )
        .values(
            status=JobStatus.CANCELLED,
            finished_at=func.greatest(func.now(), Job.started_at),
            updated_at=func.now(),
        )
        .execution_options(synchronize_session=False)
    )
    if _rowcount(result) != 1:
        return False
    add_event(session, job_id=job_id, event_type=EventType.CANCELLED, message=message)
    return True


def recover_dead_jobs(
    session: Session,
    *,
    grace_s: float,
    max_attempts: int,
    own_worker_id: str | None = None,
    own_active: Collection[int] = (),
) -> list[tuple[int, str | None, bool]]:
    """RUNNING jobs nobody runs any more go back to PENDING (``recovered``).

    Nobody runs a job whose worker stopped heart-beating (never the caller's own
    jobs: it knows better), nor one the caller owns in Postgres but is not running
    (``own_active`` lists what it runs; e.g. its final state could not be written).
    A job that already used ``max_attempts`` attempts is FAILED instead, so a job
    that kills its worker cannot loop forever.
    Returns ``(job_id, dead_worker_id, requeued)`` for each job touched.
    """
    mine = Job.worker_id == (own_worker_id or "")
    rows = session.execute(
        select(Job.id, Job.worker_id, Job.attempts, Job.cancel_requested)
        .where(
            Job.status == JobStatus.RUNNING,
            or_(
                Job.worker_id.is_(None),
                and_(~mine, ~_live_worker(Job.worker_id, grace_s)),
                and_(mine, Job.id.not_in(list(own_active) or [-1])),
            ),
        )
        .with_for_update(skip_locked=True)
    ).all()
    touched: list[tuple[int, str | None, bool]] = []
    for job_id, dead_worker, attempts, cancel in rows:
        if cancel:
            cancel_unclaimed(
                session, job_id=job_id,
                message=f"cancelled; its worker {dead_worker} stopped heart-beating",
            )
            touched.append((job_id, dead_worker, False))
            continue
        give_up = attempts >= max_attempts
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status=JobStatus.FAILED if give_up else JobStatus.PENDING,
                worker_id=None,
                updated_at=func.now(),
                finished_at=func.greatest(func.now(), Job.started_at) if give_up else None,
                error_type="WorkerLostError" if give_up else None,
                error_message=(
                    f"worker {dead_worker} died during attempt {attempts} of {max_attempts}"
                    if give_up else None
                ),
            )
            .execution_options(synchronize_session=False)
        )
        add_event(
            session,
            job_id=job_id,
            event_type=EventType.ERROR if give_up else EventType.RECOVERED,
            level=EventLevel.ERROR if give_up else EventLevel.WARNING,
            message=(
                f"worker {dead_worker} stopped heart-beating during attempt {attempts}; "
                + ("no attempts left" if give_up else "job requeued")
            ),
            payload={
                "dead_worker_id": dead_worker,
                "attempts": attempts,
                "max_attempts": max_attempts,
                "error_type": "WorkerLostError",
            },
        )
        touched.append((job_id, dead_worker, not give_up))
    return touched


def stale_pending_job_ids(session: Session, *, job_ids: Collection[int],
                          older_than_s: float) -> list[int]:
    """Which of ``job_ids`` are PENDING and untouched for a while: the reconciler checks
    that a worker did not take them in arq and die before claiming."""
    if not job_ids:
        return []
    return list(
        session.scalars(
            select(Job.id).where(
                Job.id.in_(list(job_ids)),
                Job.status == JobStatus.PENDING,
                Job.updated_at < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, older_than_s),
            )
        )
    )


def heartbeat(session: Session, *, worker_id: str, pid: int, hostname: str | None = None,
              site: str | None = None, polling: bool = True) -> None:
    """Upsert this worker's row with ``last_heartbeat_at = now()`` and whether its arq
    poll loop reaches Redis (``polling``)."""
    stmt = insert(Worker).values(
        id=worker_id, hostname=hostname or socket.gethostname(), pid=pid, site=site,
        polling=polling,
    )
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=[Worker.id],
            set_={"last_heartbeat_at": func.now(), "polling": polling, "site": site},
        )
    )


def live_sites(session: Session, *, grace_s: float) -> list[str]:
    """Sites with at least one worker heart-beating and polling its queue."""
    fresh = Worker.last_heartbeat_at > func.now() - func.make_interval(0, 0, 0, 0, 0, 0, grace_s)
    return sorted(session.scalars(
        select(Worker.site).where(fresh, Worker.polling.is_(True), Worker.site.is_not(None))
        .distinct()))


def pending_batch(session: Session, *, site: str, after_id: int, limit: int) -> list[int]:
    """The next ``limit`` PENDING jobs ``site`` may run (its own and site-less ones),
    by id after ``after_id``: the reconciler walks a backlog in turns, never all at once."""
    return list(session.scalars(
        select(Job.id)
        .where(Job.status == JobStatus.PENDING, or_(Job.site == site, Job.site.is_(None)),
               Job.id > after_id)
        .order_by(Job.id).limit(limit)))


def unnotified_ended_job_ids(session: Session, *, site: str, older_than_s: float,
                             limit: int) -> list[int]:
    """Jobs of ``site`` (or site-less) that ended a while ago and whose job-end
    notification nobody claimed: one the API cancelled before any worker saw it in arq,
    or whose arq job Redis lost. Oldest first, at most ``limit``."""
    return list(session.scalars(
        select(Job.id).where(
            Job.status.in_(list(FINAL_STATUSES)), Job.notified_at.is_(None),
            or_(Job.site == site, Job.site.is_(None)),
            Job.finished_at < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, older_than_s))
        .order_by(Job.id).limit(limit)))


def ended_job_ids(session: Session, *, job_ids: Collection[int]) -> list[int]:
    """Which of ``job_ids`` ended and were notified (or no longer exist): arq need hold
    nothing for them. An ended job not yet notified keeps its arq job: running it sends
    the notification (a job the API cancelled while PENDING)."""
    if not job_ids:
        return []
    keep = set(session.scalars(select(Job.id).where(
        Job.id.in_(list(job_ids)),
        or_(Job.status.in_([JobStatus.PENDING, JobStatus.RUNNING]), Job.notified_at.is_(None)))))
    return sorted(set(job_ids) - keep)


@dataclass(frozen=True)
class PortalLimit:
    """A portal at its ``max_concurrent_jobs``: why a job waits."""

    portal_id: int
    name: str
    limit: int
    running: int
    ahead: int


def portal_limit_reached(session: Session, *, job_id: int) -> PortalLimit | None:
    """The first of the job's portals that cannot take it now, or None.

    A portal with ``max_concurrent_jobs`` takes a job only while fewer jobs run on it
    than the limit, counting the PENDING jobs ahead of this one (lower id) as running:
    waiting jobs start in order. Call inside the claim's transaction: a per-portal
    advisory lock makes the count and the claim one step across workers.
    """
    job = session.get(Job, job_id)
    if job is None:
        return None
    for portal_id in sorted({job.source_portal_id, job.target_portal_id}):
        portal = session.get(Portal, portal_id)
        if portal is None or portal.max_concurrent_jobs is None:
            continue
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext('ketter-portal-limit'), "
                             ":portal)"), {"portal": portal_id})
        uses = or_(Job.source_portal_id == portal_id, Job.target_portal_id == portal_id)
        running = session.scalar(select(func.count(Job.id)).where(
            uses, Job.status == JobStatus.RUNNING, Job.id != job_id)) or 0
        ahead = session.scalar(select(func.count(Job.id)).where(
            uses, Job.status == JobStatus.PENDING, Job.id < job_id,
            Job.cancel_requested.is_(False))) or 0
        if running + ahead >= portal.max_concurrent_jobs:
            return PortalLimit(portal_id, portal.name, portal.max_concurrent_jobs, running, ahead)
    return None


def pending_per_site(session: Session) -> dict[str, int]:
    """PENDING jobs per site (site-less jobs are not counted: any site takes them)."""
    rows = session.execute(
        select(Job.site, func.count(Job.id))
        .where(Job.status == JobStatus.PENDING, Job.site.is_not(None)).group_by(Job.site)).all()
    return {site: int(n) for site, n in rows}


def wait_reason(session: Session, *, job: Job, grace_s: float) -> str | None:
    """Why a PENDING job is not running, in words (None when nothing holds it)."""
    if job.status is not JobStatus.PENDING:
        return None
    sites = live_sites(session, grace_s=grace_s)
    if job.site is not None and job.site not in sites:
        return f"no live worker at site {job.site!r}: the job waits for one"
    if job.site is None and not sites:
        return "no live worker at any site: the job waits for one"
    last = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job.id, JobEvent.event_type == EventType.QUEUED)
        .order_by(JobEvent.id.desc()).limit(1)).first()
    if last is not None and last.payload.get("reason") in ("portal_limit", "target_busy"):
        return last.message
    return None


def remove_worker(session: Session, *, worker_id: str) -> None:
    session.execute(delete(Worker).where(Worker.id == worker_id))


def prune_workers(session: Session, *, older_than_s: float) -> int:
    """Forget workers silent for long, unless a RUNNING job still names them."""
    result = session.execute(
        delete(Worker).where(
            Worker.last_heartbeat_at
            < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, older_than_s),
            ~exists().where(Job.worker_id == Worker.id, Job.status == JobStatus.RUNNING),
        )
    )
    return _rowcount(result)


@dataclass(frozen=True)
class WorkerBeat:
    worker_id: str
    hostname: str
    pid: int
    age_s: float
    site: str | None = None
    polling: bool = True


def worker_heartbeats(session: Session) -> list[WorkerBeat]:
    """Every known worker with the age of its last heartbeat, freshest first."""
    age = func.extract("epoch", func.now() - Worker.last_heartbeat_at)
    rows = session.execute(
        select(Worker.id, Worker.hostname, Worker.pid, Worker.site, Worker.polling,
               age.label("age"))
        .order_by(Worker.last_heartbeat_at.desc())
    ).all()
    return [WorkerBeat(r.id, r.hostname, r.pid, max(float(r.age), 0.0), r.site, r.polling)
            for r in rows]


def job_counts(session: Session, *, ended_within_s: float) -> dict[str, int]:
    """Jobs per status: every PENDING and RUNNING one, and those that ended within the
    last ``ended_within_s`` seconds (the health check's counters)."""
    recent = Job.finished_at > func.now() - func.make_interval(0, 0, 0, 0, 0, 0, ended_within_s)
    rows = session.execute(
        select(Job.status, func.count(Job.id))
        .where(or_(Job.status.in_([JobStatus.PENDING, JobStatus.RUNNING]), recent))
        .group_by(Job.status)
    ).all()
    counts = {status.value: 0 for status in JobStatus}
    counts.update({status.value: int(n) for status, n in rows})
    return counts


def ping(session: Session) -> datetime:
    """Round-trip to the database (health check); returns the server clock."""
    return session.execute(text("SELECT now()")).scalar_one()
