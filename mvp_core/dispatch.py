"""Handing jobs to arq, per site: what the API and the worker both need about queues.

One arq job per Ketter job, named after it, so enqueueing twice runs once (arq's job
key is global: a job held on one site's queue is not queued again on another).

Redis only carries work; Postgres says what must run. The API enqueues on submit, the
worker's reconciler enqueues again whatever Postgres says is PENDING and Redis does not
hold. Workers keep no arq results (``keep_result=0``), so a finished arq job never
blocks a later enqueue.

Sites: a job whose portals name a site (``jobs.site``) goes to that site's queue, which
only that site's workers read. A job with no site (ssh portals only) goes to the queue
of a site with a live worker, picked by job id so such jobs spread over the sites.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from arq.connections import ArqRedis
from arq.constants import (
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from redis.asyncio import ConnectionPool

JOB_FUNCTION = "run_job"


def arq_job_id(job_id: int) -> str:
    return f"ketter-job-{job_id}"


def job_id_of(arq_id: str) -> int | None:
    """The Ketter job id in an arq job id (None for anything else)."""
    prefix = "ketter-job-"
    tail = arq_id[len(prefix):] if arq_id.startswith(prefix) else ""
    return int(tail) if tail.isdigit() else None


def site_queue(queue_name: str, site: str) -> str:
    """The arq queue the workers of ``site`` read."""
    return f"{queue_name}:site:{site}"


class SiteConflictError(ValueError):
    """A job's portals name two different sites: no one worker can reach both disks."""


def job_site(source: tuple[str | None, bool], target: tuple[str | None, bool]) -> str | None:
    """The site that must run a job, from its portals' ``(site, is_local)``.

    A local portal's site wins (its disk is only there); an ssh portal's site counts
    only when it pins one. None: any site may run it.
    """
    named = [site for site, local in (source, target) if site and local]
    if not named:
        named = [site for site, _local in (source, target) if site]
    if len(set(named)) > 1:
        raise SiteConflictError(
            f"the job's portals are on different sites ({named[0]!r} and {named[1]!r}); "
            "one worker must reach both")
    return named[0] if named else None


def route(*, queue_name: str, site: str | None, live_sites: Sequence[str],
          job_id: int) -> str | None:
    """The queue a job goes to now; None when no live worker can run it yet."""
    if site is not None:
        return site_queue(queue_name, site)
    if not live_sites:
        return None
    ordered = sorted(live_sites)
    return site_queue(queue_name, ordered[job_id % len(ordered)])


def make_queue_redis(redis_url: str, *, queue_name: str) -> ArqRedis:
    """An arq client that connects lazily and gives up quickly when Redis is down."""
    pool = ConnectionPool.from_url(
        redis_url, socket_connect_timeout=3, socket_timeout=10, health_check_interval=30
    )
    return ArqRedis(pool, default_queue_name=queue_name)


async def enqueue(
    redis: ArqRedis, *, job_id: int, queue_name: str, defer_s: float | None = None
) -> bool:
    """Queue the job; False when arq already holds it (queued, deferred or running)."""
    arq_job = await redis.enqueue_job(
        JOB_FUNCTION,
        job_id,
        _job_id=arq_job_id(job_id),
        _queue_name=queue_name,
        _defer_by=defer_s if defer_s else None,
    )
    return arq_job is not None


async def held(redis: ArqRedis, job_ids: Sequence[int]) -> list[bool]:
    """For each job, does arq hold it (its job key exists)? One round trip for all."""
    if not job_ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.exists(job_key_prefix + arq_job_id(job_id))
        return [bool(n) for n in await pipe.execute()]


async def force_requeue(redis: ArqRedis, *, job_id: int, queue_name: str,
                        other_queues: Iterable[str] = ()) -> bool:
    """Make a job whose worker died runnable now, on ``queue_name``.

    arq marks a started job "in progress" for the whole job timeout (hours for a
    transfer), so a job orphaned by a dead worker would otherwise wait that long.
    Only call this for a job Postgres says no live worker runs. ``other_queues``: where
    else it may sit (a site with no live worker any more), taken off them first.
    """
    name = arq_job_id(job_id)
    await redis.delete(in_progress_key_prefix + name, result_key_prefix + name)
    for other in other_queues:
        if other != queue_name:
            await redis.zrem(other, name)
    if await redis.exists(job_key_prefix + name) and await redis.zscore(queue_name, name) is None:
        await redis.delete(job_key_prefix + name)  # a job key no queue points to: start afresh
    await enqueue(redis, job_id=job_id, queue_name=queue_name)
    return True


async def forget(redis: ArqRedis, *, job_ids: Sequence[int], queues: Iterable[str]) -> None:
    """Remove what arq still holds of jobs that ended (a key left by a worker that died,
    or by a Redis outage at the wrong moment): one round trip."""
    if not job_ids:
        return
    names = [arq_job_id(j) for j in job_ids]
    async with redis.pipeline(transaction=False) as pipe:
        pipe.delete(*(prefix + n for n in names for prefix in
                      (job_key_prefix, in_progress_key_prefix, retry_key_prefix,
                       result_key_prefix)))
        for queue in queues:
            pipe.zrem(queue, *names)
        await pipe.execute()


async def is_in_progress(redis: ArqRedis, *, job_id: int) -> bool:
    return bool(await redis.exists(in_progress_key_prefix + arq_job_id(job_id)))
