"""Heartbeat and reconciler: Postgres, not Redis, decides what must still run.

- The heartbeat writes ``workers.last_heartbeat_at`` every ``heartbeat_interval_s``.
- The reconciler (at start-up, then every ``reconcile_interval_s``):
  1. sends RUNNING jobs whose worker missed its heartbeat for ``heartbeat_grace_s``
     (only once its own heartbeats have landed for a whole grace period, so a
     Postgres outage does not make every worker look dead), and its own RUNNING
     jobs it is not running (their final state could not be written);
     back to PENDING with a ``recovered`` event (FAILED once ``max_attempts`` are
     spent) and makes them runnable now in arq (arq would otherwise keep a dead
     worker's job "in progress" for the whole job timeout);
  2. enqueues every PENDING job again: arq ignores the duplicate while it holds the
     job, and re-creates it after Redis lost it (restart, FLUSHALL);
  3. frees PENDING jobs that a worker picked up in arq but died before claiming;
  4. starts (at most every 10 min, in the background) the sweep of staging
     directories left by jobs that ended (``worker.staging``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from mvp_core.db import repository as repo
from mvp_core.db.models import JobStatus
from mvp_core.worker.queue import enqueue, force_requeue, is_in_progress
from mvp_core.worker.staging import maybe_sweep
from mvp_core.worker.state import WorkerState

log = logging.getLogger(__name__)

PRUNE_WORKERS_AFTER_S = 24 * 3600


async def beat(state: WorkerState) -> None:
    try:
        await state.db(
            lambda s: repo.heartbeat(s, worker_id=state.worker_id, pid=state.pid,
                                     hostname=state.hostname)
        )
    except BaseException:
        state.beats_ok_since = None
        raise
    if state.beats_ok_since is None:
        state.beats_ok_since = time.monotonic()


async def heartbeat_loop(state: WorkerState) -> None:
    while True:
        try:
            await beat(state)
        except Exception as exc:  # noqa: BLE001 - keep beating once the DB is back
            log.warning("heartbeat failed: %s", exc)
        await asyncio.sleep(state.settings.heartbeat_interval_s)


@dataclass
class ReconcileReport:
    recovered: list[int] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)
    freed: list[int] = field(default_factory=list)


async def reconcile_once(state: WorkerState) -> ReconcileReport:
    settings = state.settings
    report = ReconcileReport()
    maybe_sweep(state)  # staging dirs of ended jobs, in the background, whatever fails below
    touched: list[tuple[int, str | None, bool]] = []
    if state.trusts_heartbeats():
        touched = await state.db(
            lambda s: repo.recover_dead_jobs(
                s, grace_s=settings.heartbeat_grace_s, max_attempts=settings.max_attempts,
                own_worker_id=state.worker_id, own_active=set(state.active_jobs),
            )
        )
    for job_id, dead_worker, _requeue in touched:
        log.warning("job %s: worker %s stopped heart-beating", job_id, dead_worker)
        report.recovered.append(job_id)
        # Also for jobs that just ended: the job function cleans their temp files.
        await force_requeue(state.redis, job_id=job_id, queue_name=settings.queue_name)

    pending = await state.db(lambda s: repo.list_job_ids(s, status=JobStatus.PENDING))
    stale = set(
        await state.db(
            lambda s: repo.stale_pending_job_ids(s, older_than_s=settings.heartbeat_grace_s)
        )
    )
    for job_id in pending:
        if await enqueue(state.redis, job_id=job_id, queue_name=settings.queue_name):
            report.requeued.append(job_id)
        elif job_id in stale and await is_in_progress(state.redis, job_id=job_id):
            # Picked up in arq, never claimed in Postgres for a whole grace period:
            # the worker that took it died between the two.
            await force_requeue(state.redis, job_id=job_id, queue_name=settings.queue_name)
            report.freed.append(job_id)
    if report.requeued or report.freed:
        log.info("reconciler: queued %s, freed %s", report.requeued, report.freed)
    await state.db(lambda s: repo.prune_workers(s, older_than_s=PRUNE_WORKERS_AFTER_S))
    return report


async def reconcile_loop(state: WorkerState) -> None:
    while True:
        try:
            await reconcile_once(state)
        except Exception as exc:  # noqa: BLE001 - Postgres or Redis away: next round
            log.warning("reconcile failed: %s", exc)
        await asyncio.sleep(state.settings.reconcile_interval_s)
