"""``GET /health``: can we reach Postgres and Redis, and does a worker take jobs, per site?
No auth. A worker is ok when it heart-beats *and* its arq poll loop reaches Redis."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response, status
from starlette.concurrency import run_in_threadpool

from mvp_core.app.deps import QueueDep, SessionDep, SettingsDep
from mvp_core.app.schemas import HealthOut, ServiceHealth, SiteHealth, WorkerHealth
from mvp_core.db import repository as repo

router = APIRouter(tags=["health"])


COUNT_WINDOW_S = 24 * 3600


def _database(session: SessionDep, grace_s: float
              ) -> tuple[ServiceHealth, list[WorkerHealth], dict[str, int],
                         dict[str, SiteHealth]]:
    try:
        repo.ping(session)
        beats = repo.worker_heartbeats(session)
        counts = repo.job_counts(session, ended_within_s=COUNT_WINDOW_S)
        pending = repo.pending_per_site(session)
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"; say which
        return ServiceHealth(ok=False, error=f"{type(exc).__name__}"), [], {}, {}
    finally:
        session.rollback()
    workers = [
        WorkerHealth(id=b.worker_id, hostname=b.hostname, pid=b.pid, site=b.site,
                     heartbeat_age_s=round(b.age_s, 3), alive=b.age_s <= grace_s,
                     polling=b.polling, ok=b.age_s <= grace_s and b.polling)
        for b in beats
    ]
    sites: dict[str, SiteHealth] = {}
    for name in sorted({w.site for w in workers if w.site} | set(pending)):
        here = [w for w in workers if w.site == name]
        n_ok = sum(w.ok for w in here)
        sites[name] = SiteHealth(ok=n_ok > 0, workers_ok=n_ok, workers_not_ok=len(here) - n_ok,
                                 pending=pending.get(name, 0))
    return ServiceHealth(ok=True), workers, counts, sites


@router.get("/health", responses={503: {"model": HealthOut}})
async def health(
    response: Response, session: SessionDep, settings: SettingsDep, queue: QueueDep
) -> HealthOut:
    """200 when Postgres and Redis answer (``status`` degraded if no worker takes jobs, or a
    site with PENDING jobs has none), else 503."""
    database, workers, counts, sites = await run_in_threadpool(_database, session,
                                                               settings.heartbeat_grace_s)
    try:
        await asyncio.wait_for(queue.ping(), timeout=3)
        redis = ServiceHealth(ok=True)
    except Exception as exc:  # noqa: BLE001 - timeouts, refused, auth errors
        redis = ServiceHealth(ok=False, error=type(exc).__name__)
    freshest = workers[0].heartbeat_age_s if workers else None
    worker_ok = any(w.ok for w in workers)
    if not (database.ok and redis.ok):
        state = "down"
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    else:
        state = "ok" if worker_ok and all(s.ok for s in sites.values()) else "degraded"
    return HealthOut(
        status=state, database=database, redis=redis, worker_ok=worker_ok,
        worker_heartbeat_age_s=freshest, workers=workers, sites=sites, jobs_last_24h=counts,
    )
