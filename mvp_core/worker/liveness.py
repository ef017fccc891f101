"""Heartbeat, Redis watch and reconciler: Postgres, not Redis, decides what must still run.

- The heartbeat writes ``workers.last_heartbeat_at`` every ``heartbeat_interval_s``, on
  its own thread (never behind transfers), with the worker's site and whether its arq
  poll loop reaches Redis (``polling``).
- The Redis watch PINGs Redis on the poll loop's connection pool; when Redis answers
  again after an outage, the reconciler runs at once (jobs submitted meanwhile start
  within seconds, not at the next pass).
- The reconciler (at start-up, then every ``reconcile_interval_s``):
  1. sends RUNNING jobs whose worker missed its heartbeat for ``heartbeat_grace_s``
     (only once its own heartbeats have landed for a whole grace period, so a
     Postgres outage does not make every worker look dead), and its own RUNNING
     jobs it is not running (their final state could not be written);
     back to PENDING with a ``recovered`` event (FAILED once ``max_attempts`` are
     spent) and makes them runnable now in arq (arq would otherwise keep a dead
     worker's job "in progress" for the whole job timeout);
  2. looks at the next ``reconcile_batch`` PENDING jobs of its site (and site-less
     ones), in id order, continuing where the last pass stopped: asks Redis in one
     round trip which it holds, and enqueues only the others (re-created after Redis
     lost them). A backlog of any size costs the same per pass;
  3. frees PENDING jobs of that batch that a worker picked up in arq but died before
     claiming, and site-less jobs left on the queue of a site with no live worker;
  4. removes arq keys of jobs that ended (SCAN, a bounded step per pass), and sends the
     job-end notification of ended jobs nobody notified (a job the API cancelled before
     a worker saw it: one submitted while no worker was live was never in arq);
  5. starts (at most every 10 min, in the background) the sweep of staging
     directories left by jobs that ended (``worker.staging``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from arq.constants import job_key_prefix

from mvp_core.db import repository as repo
from mvp_core.dispatch import (
    arq_job_id,
    enqueue,
    force_requeue,
    forget,
    held,
    is_in_progress,
    job_id_of,
    site_queue,
)
from mvp_core.worker.notify import notify_later
from mvp_core.worker.staging import maybe_sweep
from mvp_core.worker.state import WorkerState

log = logging.getLogger(__name__)

PRUNE_WORKERS_AFTER_S = 24 * 3600
REDIS_PING_TIMEOUT_S = 2.0
SWEEP_SCAN_COUNT = 500
# An ended job's own worker notifies at once; the reconciler steps in after this long.
UNNOTIFIED_AFTER_S = 5.0


async def beat(state: WorkerState) -> None:
    try:
        await state.db_beat(
            lambda s: repo.heartbeat(s, worker_id=state.worker_id, pid=state.pid,
                                     hostname=state.hostname, site=state.site,
                                     polling=state.polling())
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


async def redis_watch_loop(state: WorkerState) -> None:
    """Keep ``state.redis_ok`` true only while Redis answers; wake the reconciler when
    it comes back."""
    while True:
        try:
            await asyncio.wait_for(state.redis.ping(), timeout=REDIS_PING_TIMEOUT_S)
            ok = True
        except Exception:  # noqa: BLE001 - refused, timed out, reset: all mean "down"
            ok = False
        if ok != state.redis_ok:
            log.warning("Redis %s", "answers again" if ok else "unreachable: not polling")
            state.redis_ok = ok
            with contextlib.suppress(Exception):
                await beat(state)  # /health tells at once, not at the next beat
            if ok:
                state.redis_back.set()
        await asyncio.sleep(min(state.settings.heartbeat_interval_s, 1.0))


@dataclass
class ReconcileReport:
    recovered: list[int] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)
    freed: list[int] = field(default_factory=list)
    looked_at: int = 0
    forgotten: list[int] = field(default_factory=list)


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
        await force_requeue(state.redis, job_id=job_id, queue_name=state.queue_name)

    await _reconcile_pending(state, report)
    await _forget_ended(state, report)
    unnotified = await state.db(lambda s: repo.unnotified_ended_job_ids(
        s, site=state.site, older_than_s=UNNOTIFIED_AFTER_S, limit=settings.reconcile_batch))
    for job_id in unnotified:
        notify_later(state, job_id)  # the claim in Postgres makes it exactly one
    if report.requeued or report.freed:
        log.info("reconciler: queued %s, freed %s", report.requeued, report.freed)
    await state.db(lambda s: repo.prune_workers(s, older_than_s=PRUNE_WORKERS_AFTER_S))
    return report


async def _reconcile_pending(state: WorkerState, report: ReconcileReport) -> None:
    """One batch of the PENDING backlog: enqueue what Redis does not hold."""
    settings = state.settings
    batch = await state.db(lambda s: repo.pending_batch(
        s, site=state.site, after_id=state.reconcile_after_id, limit=settings.reconcile_batch))
    # Next pass continues after this batch; at the end of the backlog, from the start.
    state.reconcile_after_id = batch[-1] if len(batch) == settings.reconcile_batch else 0
    report.looked_at = len(batch)
    if not batch:
        return
    holds = await held(state.redis, batch)
    for job_id, is_held in zip(batch, holds, strict=True):
        if not is_held and await enqueue(state.redis, job_id=job_id,
                                         queue_name=state.queue_name):
            report.requeued.append(job_id)
    held_ids = [j for j, h in zip(batch, holds, strict=True) if h]
    if not held_ids:
        return
    stale = await state.db(lambda s: repo.stale_pending_job_ids(
        s, job_ids=held_ids, older_than_s=settings.heartbeat_grace_s))
    if not stale:
        return
    live = await state.db(lambda s: repo.live_sites(s, grace_s=settings.heartbeat_grace_s))
    dead_queues = await _dead_site_queues(state, live)
    for job_id in stale:
        if await is_in_progress(state.redis, job_id=job_id):
            # Picked up in arq, never claimed in Postgres for a whole grace period:
            # the worker that took it died between the two.
            await force_requeue(state.redis, job_id=job_id, queue_name=state.queue_name)
            report.freed.append(job_id)
        elif dead_queues and await _queued_on(state, job_id, dead_queues):
            # A site-less job routed to a site whose workers are gone: take it here.
            await force_requeue(state.redis, job_id=job_id, queue_name=state.queue_name,
                                other_queues=dead_queues)
            report.freed.append(job_id)


async def _dead_site_queues(state: WorkerState, live: list[str]) -> list[str]:
    """Queues of sites that had workers but have no live one now."""
    beats = await state.db(lambda s: repo.worker_heartbeats(s))
    sites = {b.site for b in beats if b.site} - set(live) - {state.site}
    return [site_queue(state.settings.queue_name, s) for s in sorted(sites)]


async def _queued_on(state: WorkerState, job_id: int, queues: list[str]) -> bool:
    name = arq_job_id(job_id)
    for queue in queues:
        if await state.redis.zscore(queue, name) is not None:
            return True
    return False


async def _forget_ended(state: WorkerState, report: ReconcileReport) -> None:
    """One SCAN step over arq's job keys: drop those of jobs Postgres says ended."""
    cursor, keys = await state.redis.scan(
        cursor=state.sweep_cursor, match=f"{job_key_prefix}ketter-job-*",
        count=SWEEP_SCAN_COUNT)
    state.sweep_cursor = int(cursor)
    ids = [j for j in (job_id_of(k.decode()[len(job_key_prefix):]) for k in keys)
           if j is not None]
    if not ids:
        return
    ended = await state.db(lambda s: repo.ended_job_ids(s, job_ids=ids))
    if ended:
        await forget(state.redis, job_ids=ended, queues=[state.queue_name])
        report.forgotten.extend(ended)


async def reconcile_loop(state: WorkerState) -> None:
    while True:
        try:
            await reconcile_once(state)
        except Exception as exc:  # noqa: BLE001 - Postgres or Redis away: next round
            log.warning("reconcile failed: %s", exc)
        state.redis_back.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.redis_back.wait(),
                                   timeout=state.settings.reconcile_interval_s)
