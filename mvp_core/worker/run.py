"""The arq worker: ``arq mvp_core.worker.run.WorkerSettings`` (settings from KETTER_* env vars).

On start-up it opens the database, registers itself in ``workers`` and starts two
background tasks: the heartbeat and the reconciler (see ``liveness``). The job
function lives in ``execute_job``; jobs are queued by ``queue.enqueue``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from arq.connections import RedisSettings

from mvp_core.config import Settings, get_settings
from mvp_core.db import repository as repo
from mvp_core.db.session import make_engine, make_session_factory
from mvp_core.worker.execute_job import run_job
from mvp_core.worker.liveness import beat, heartbeat_loop, reconcile_loop
from mvp_core.worker.queue import JOB_FUNCTION
from mvp_core.worker.state import WorkerState

log = logging.getLogger("mvp_core.worker")

# Jobs "may be called more than once"; our own retries are counted in Postgres
# (max_attempts), arq's counter only has to stay out of the way of target-busy waits.
ARQ_MAX_TRIES = 10_000


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
    state.installation = await state.db_persistent(repo.installation_id, what="installation id")
    await beat(state)  # visible as alive before it reconciles anything
    state.background.append(asyncio.create_task(heartbeat_loop(state), name="heartbeat"))
    state.background.append(asyncio.create_task(reconcile_loop(state), name="reconciler"))
    log.info("worker %s started (max_jobs=%d, queue=%s)", state.worker_id,
             settings.worker_max_jobs, settings.queue_name)


async def shutdown(ctx: dict[str, Any]) -> None:
    state: WorkerState | None = ctx.get("ketter")
    if state is None:
        return
    for task in state.background:
        task.cancel()
    for task in state.background:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    with contextlib.suppress(Exception):
        await state.db(lambda s: repo.remove_worker(s, worker_id=state.worker_id))
    state.engine.dispose()
    log.info("worker %s stopped", state.worker_id)


def _settings_class(settings: Settings) -> type:
    class WorkerSettings:
        """arq reads these attributes; values come from Settings (KETTER_* env vars)."""

        functions = (run_job,)
        on_startup = startup
        on_shutdown = shutdown
        redis_settings = RedisSettings.from_dsn(settings.redis_url)
        queue_name = settings.queue_name
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
