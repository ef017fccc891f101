"""Jobs: submit, read, list, events, cancel. The API records and enqueues; workers transfer."""

from __future__ import annotations

import asyncio
import csv
import io
import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response, status
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from mvp_core.app.deps import JobId, QueueDep, SessionDep, SettingsDep
from mvp_core.app.schemas import (
    EventOut,
    JobCreate,
    JobOut,
    ManifestFileOut,
    ManifestOut,
    error_responses,
)
from mvp_core.app.services import submit_job
from mvp_core.config import Settings
from mvp_core.db import repository as repo
from mvp_core.db.models import EventLevel, EventType, JobStatus, VerifyMode
from mvp_core.dispatch import enqueue, route

log = logging.getLogger(__name__)
ENQUEUE_TIMEOUT_S = 5.0  # a hung Redis must not hang the submit: the reconciler catches up
router = APIRouter(prefix="/jobs", tags=["jobs"], responses=error_responses(401, 503))


def _store(session: SessionDep, body: JobCreate, settings: Settings
           ) -> tuple[int, str | None]:
    """Store the job; return its id and the queue to hand it to: its site's (waiting
    there for a worker if none is live), or a live site's for a site-less job (None
    when there is none: the first worker's reconciler queues it)."""
    job = submit_job(session, request=body, default_verify=VerifyMode(settings.verify),
                     default_write_mhl=settings.write_mhl)
    live = repo.live_sites(session, grace_s=settings.heartbeat_grace_s)
    queue = route(queue_name=settings.queue_name, site=job.site, live_sites=live,
                  job_id=job.id)
    session.commit()
    return job.id, queue


def _note_not_queued(session: SessionDep, job_id: int, reason: str) -> None:
    repo.add_event(
        session, job_id=job_id, event_type=EventType.QUEUED, level=EventLevel.WARNING,
        message=f"not handed to Redis ({reason}); a worker's reconciler will queue it",
    )
    session.commit()


@router.post("", status_code=status.HTTP_201_CREATED, responses=error_responses(400))
async def create_job(
    body: JobCreate, response: Response, session: SessionDep, settings: SettingsDep,
    queue: QueueDep,
) -> JobOut:
    """Store the job PENDING, then hand it to arq (named after the job, so it runs once).

    If Redis is unreachable the job is still stored: Postgres is the truth, and
    every worker's reconciler queues PENDING jobs Redis does not hold.
    """
    job_id, queue_name = await run_in_threadpool(_store, session, body, settings)
    response.headers["Location"] = f"/jobs/{job_id}"
    if queue_name is None:  # no live worker anywhere: the first one's reconciler takes it
        return await run_in_threadpool(_read, session, job_id, settings)
    try:
        await asyncio.wait_for(enqueue(queue, job_id=job_id, queue_name=queue_name),
                               timeout=ENQUEUE_TIMEOUT_S)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("job %s stored but not queued: %s", job_id, exc)
        await run_in_threadpool(_note_not_queued, session, job_id, type(exc).__name__)
    return await run_in_threadpool(_read, session, job_id, settings)


def _read(session: SessionDep, job_id: int, settings: Settings) -> JobOut:
    session.expire_all()
    job = repo.get_job(session, job_id=job_id)
    return JobOut.from_job(job, waiting_reason=repo.wait_reason(
        session, job=job, grace_s=settings.heartbeat_grace_s))


@router.get("")
def list_jobs(
    session: SessionDep,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    include_dku: Annotated[bool, Query()] = False,
) -> list[JobOut]:
    """Newest first; the DKU's smoke jobs only with ``include_dku=true``."""
    jobs = repo.list_jobs(
        session, status=status_, limit=limit, offset=offset, include_dku=include_dku
    )
    return [JobOut.from_job(j) for j in jobs]


@router.get("/{job_id}", responses=error_responses(404))
def get_job(job_id: JobId, session: SessionDep, settings: SettingsDep) -> JobOut:
    """The job; a PENDING one says why it waits (``waiting_reason``)."""
    return _read(session, job_id, settings)


@router.get("/{job_id}/events", responses=error_responses(404))
def list_events(
    job_id: JobId,
    session: SessionDep,
    event_type: Annotated[EventType | None, Query()] = None,
    after_id: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> list[EventOut]:
    """Oldest first; page with ``after_id`` (the last id you saw)."""
    events = repo.list_events(
        session, job_id=job_id, event_type=event_type, after_id=after_id, limit=limit
    )
    return [EventOut.model_validate(e) for e in events]


_CSV = {200: {"content": {"text/csv": {"schema": {"type": "string"}}},
              "description": "the manifest as JSON, or with format=csv as CSV"}}


@router.get("/{job_id}/manifest", responses={**error_responses(404, 409), **_CSV})
def get_manifest(
    job_id: JobId,
    session: SessionDep,
    format_: Annotated[Literal["json", "csv"], Query(alias="format")] = "json",
) -> ManifestOut:
    """The delivery receipt of a DONE job: every delivered file with its size and content
    hash (``algorithm``), as JSON or, with ``format=csv``, for a spreadsheet."""
    job, files = repo.job_manifest(session, job_id=job_id)
    if job.status is not JobStatus.DONE:
        raise repo.ConflictError(f"job {job_id} is {job.status.value}: a manifest exists "
                                 "only for a DONE job")
    if format_ == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["path", "size", "mtime_ns", job.manifest_algorithm or "hash"])
        for f in files:
            writer.writerow([f.path, f.size, "" if f.mtime_ns is None else f.mtime_ns,
                             f.hash or ""])
        return Response(out.getvalue(), media_type="text/csv",  # type: ignore[return-value]
                        headers={"Content-Disposition":
                                 f'attachment; filename="ketter-job-{job_id}-manifest.csv"'})
    return ManifestOut(job_id=job_id, algorithm=job.manifest_algorithm,
                       files=[ManifestFileOut(path=f.path, size=f.size, hash=f.hash)
                              for f in files])


@router.post("/{job_id}/cancel", responses=error_responses(404, 409))
def cancel_job(job_id: JobId, session: SessionDep) -> JobOut:
    """A PENDING job ends CANCELLED now; a RUNNING one is stopped by its worker shortly."""
    job = repo.request_cancel(session, job_id=job_id)
    session.commit()
    return JobOut.from_job(job)
