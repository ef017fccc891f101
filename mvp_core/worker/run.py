"""The arq worker: ``arq mvp_core.worker.run.WorkerSettings`` (settings from KETTER_* env vars).

On start-up it opens the database, registers itself in ``workers`` and starts three
background tasks: the heartbeat, the Redis watch and the reconciler (see ``liveness``).
The job function lives in ``execute_job``; jobs are queued by ``dispatch.enqueue``.

It reads its site's queue (``KETTER_WORKER_SITE``). Every Redis command of arq's poll
loop and job bookkeeping retries forever with a capped backoff, so a Redis outage of
any length pauses taking jobs instead of ending the loop (or the process, aborting the
transfers it runs): transfers go on, their final state goes to Postgres, and arq's
bookkeeping lands when Redis answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from arq.connections import RedisSettings
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mvp_core.config import Settings, get_settings
from mvp_core.db import repository as repo
from mvp_core.db.session import make_engine, make_session_factory
from mvp_core.dispatch import JOB_FUNCTION, site_queue
from mvp_core.worker.execute_job import run_job
from mvp_core.worker.liveness import beat, heartbeat_loop, reconcile_loop, redis_watch_loop
from mvp_core.worker.notify import drain
from mvp_core.worker.state import WorkerState

log = logging.getLogger("mvp_core.worker")

# Jobs "may be called more than once"; our own retries are counted in Postgres
# (max_attempts), arq's counter only has to stay out of the way of target-busy waits.
ARQ_MAX_TRIES = 10_000
# Threads a job may hold at once in the shared pool: the engine's, a DB write, a lock.
THREADS_PER_JOB = 3
# Longest wait between two tries to reach Redis again during an outage.
REDIS_RETRY_CAP_S = 1.0


def retrying_redis_settings(redis_url: str) -> RedisSettings:
    """arq's connection settings: every command retries forever while Redis is away."""
    return dataclasses.replace(
        RedisSettings.from_dsn(redis_url),
        retry=Retry(ExponentialBackoff(cap=REDIS_RETRY_CAP_S, base=0.05), retries=-1),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, ConnectionError, OSError],
        conn_timeout=3,
    )


def _configure_logging() -> None:
    """arq's CLI configures only its own logger; ours go to stderr the same way."""
    ours = logging.getLogger("mvp_core")
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                               "%H:%M:%S"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)


async def startup(ctx: dict[str, Any]) -> None:
    _configure_logging()
    settings: Settings = ctx.get("settings") or get_settings()
    engine = make_engine(settings.database_url)
    state = WorkerState(
        settings=settings,
        engine=engine,
        sessions=make_session_factory(engine),
        redis=ctx["redis"],
    )
    ctx["ketter"] = state
    # on_startup runs inside arq's main task, the one that then polls the queue.
    state.poll_task = asyncio.current_task()
    # Transfers, DB calls and locks share this pool: sized from max_jobs so a full
    # worker never makes the others (reconciler, cancel checks) wait.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(
        settings.worker_max_jobs * THREADS_PER_JOB + 4, thread_name_prefix="ketter"))
    state.installation = await state.db_persistent(repo.installation_id, what="installation id")
    await beat(state)  # visible as alive before it reconciles anything
    state.background.append(asyncio.create_task(heartbeat_loop(state), name="heartbeat"))
    state.background.append(asyncio.create_task(redis_watch_loop(state), name="redis-watch"))
    state.background.append(asyncio.create_task(reconcile_loop(state), name="reconciler"))
    log.info("worker %s started (site=%s, max_jobs=%d, queue=%s)", state.worker_id,
             state.site, settings.worker_max_jobs, state.queue_name)


async def shutdown(ctx: dict[str, Any]) -> None:
    state: WorkerState | None = ctx.get("ketter")
    if state is None:
        return
    await drain(state)
    for task in state.background:
        task.cancel()
    for task in state.background:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    with contextlib.suppress(Exception):
        await state.db(lambda s: repo.remove_worker(s, worker_id=state.worker_id))
    state.engine.dispose()
    state.beat_executor.shutdown(wait=False)
    log.info("worker %s stopped", state.worker_id)


def _settings_class(settings: Settings) -> type:
    class WorkerSettings:
        """arq reads these attributes; values come from Settings (KETTER_* env vars)."""

        functions = (run_job,)
        on_startup = startup
        on_shutdown = shutdown
        redis_settings = retrying_redis_settings(settings.redis_url)
        queue_name = site_queue(settings.queue_name, settings.worker_site)
        max_jobs = settings.worker_max_jobs
        # Our own watchdog fails a job at job_timeout_s; arq's is a backstop.
        job_timeout = settings.job_timeout_s + 120
        max_tries = ARQ_MAX_TRIES
        keep_result = 0
        # How long an idle worker waits between looks at the queue: it is pure latency
        # added to every job's start (the lab's 1-file job), and one ZRANGEBYSCORE per look.
        poll_delay = 0.01
        health_check_interval = 60

    return WorkerSettings


if run_job.__name__ != JOB_FUNCTION:  # the API enqueues by this name
    raise RuntimeError(f"job function must be named {JOB_FUNCTION}")
WorkerSettings = _settings_class(get_settings())
