"""Handing jobs to arq: one arq job per Ketter job, named after it, so enqueueing twice runs once.

Redis only carries work; Postgres says what must run. The API enqueues on submit,
the worker's reconciler enqueues again whatever Postgres says is PENDING (arq
ignores the duplicate while the arq job exists). Workers keep no arq results
(``keep_result=0``), so a finished arq job never blocks a later enqueue.
"""

from __future__ import annotations

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from redis.asyncio import ConnectionPool

JOB_FUNCTION = "run_job"


def arq_job_id(job_id: int) -> str:
    return f"ketter-job-{job_id}"


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


async def force_requeue(redis: ArqRedis, *, job_id: int, queue_name: str) -> bool:
    """Make a job whose worker died runnable now.

    arq marks a started job "in progress" for the whole job timeout (hours for a
    transfer), so a job orphaned by a dead worker would otherwise wait that long.
    Only call this for a job Postgres says no live worker runs.
    """
    name = arq_job_id(job_id)
    await redis.delete(in_progress_key_prefix + name, result_key_prefix + name)
    if await redis.exists(job_key_prefix + name) and await redis.zscore(queue_name, name) is None:
        await redis.delete(job_key_prefix + name)  # a job key no queue points to: start afresh
    await enqueue(redis, job_id=job_id, queue_name=queue_name)
    return True


async def is_in_progress(redis: ArqRedis, *, job_id: int) -> bool:
    return bool(await redis.exists(in_progress_key_prefix + arq_job_id(job_id)))
