"""The reconciler's work per pass is bounded, whatever the PENDING backlog.

Thousands of PENDING rows (inserted in one statement) on the real test Postgres, the
private Redis, and the worker's own ``reconcile_once`` run in-process. Work is counted
in Redis commands (``INFO``), not wall time: one pass looks at one batch, asks Redis in
one round trip which jobs it holds, and enqueues only the others.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from mvp_core.config import Settings
from mvp_core.db.session import make_engine, make_session_factory
from mvp_core.dispatch import arq_job_id, enqueue, make_queue_redis, site_queue
from mvp_core.worker.liveness import ReconcileReport, reconcile_once
from mvp_core.worker.state import WorkerState
from tests.fixtures.redis import RedisServer

BACKLOG = 3000
BATCH = 200
ENDED = 40
QUEUE = "ketter:test"
# Commands arq's enqueue costs per job (WATCH, 2 EXISTS, MULTI, PSETEX, ZADD, EXEC, ...).
PER_ENQUEUE = 10
# What a pass costs besides the batch: the SCAN step, the ended-job sweep, INFO.
OVERHEAD = 40


def _insert_backlog(db_engine: Engine, root: Path) -> tuple[list[int], list[int]]:
    """BACKLOG PENDING jobs of site suite-a, and ENDED jobs that ended and were notified."""
    with db_engine.begin() as conn:
        portal = conn.execute(text(
            "INSERT INTO portals (name, kind, base_path, site) "
            "VALUES ('lab', 'local', :base, 'suite-a') RETURNING id"),
            {"base": str(root)}).scalar_one()
        rows = """INSERT INTO jobs (mode, source_portal_id, source_path, target_portal_id,
                                     target_path, site, status, notified_at, finished_at,
                                     started_at)
                  SELECT 'copy', :p, 'Mix ' || n, :p, 'out', 'suite-a', :status,
                         CASE WHEN :ended THEN now() END, CASE WHEN :ended THEN now() END,
                         CASE WHEN :ended THEN now() END
                  FROM generate_series(1, :n) AS n RETURNING id"""
        pending = list(conn.execute(text(rows), {"p": portal, "status": "PENDING",
                                                 "ended": False, "n": BACKLOG}).scalars())
        ended = list(conn.execute(text(rows), {"p": portal, "status": "DONE",
                                               "ended": True, "n": ENDED}).scalars())
    return pending, ended


def _commands(client: Any) -> dict[str, int]:
    stats = client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    calls["total"] = int(client.info("stats")["total_commands_processed"])
    return calls


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def test_reconciler_pass_is_bounded_by_its_batch(
        clean_database_url: str, db_engine: Engine, redis_url: str,
        redis_server: RedisServer, tmp_path: Path) -> None:
    pending, ended = _insert_backlog(db_engine, tmp_path)
    settings = Settings(database_url=clean_database_url, redis_url=redis_url,
                        queue_name=QUEUE, worker_site="suite-a", reconcile_batch=BATCH,
                        temp_dir=tmp_path / "tmp")
    queue = site_queue(QUEUE, "suite-a")
    passes: list[tuple[ReconcileReport, dict[str, int]]] = []

    async def run() -> None:
        engine = make_engine(clean_database_url)
        redis = make_queue_redis(redis_url, queue_name=queue)
        state = WorkerState(settings=settings, engine=engine,
                            sessions=make_session_factory(engine), redis=redis)
        try:
            for job_id in ended:  # arq keys a dead worker or an outage left behind
                await enqueue(redis, job_id=job_id, queue_name=queue)
            with redis_server.client() as client:
                for _ in range(BACKLOG // BATCH + 3):
                    before = _commands(client)
                    report = await reconcile_once(state)
                    passes.append((report, _delta(before, _commands(client))))
        finally:
            for task in state.background:
                task.cancel()
            await asyncio.gather(*state.background, return_exceptions=True)
            await redis.aclose()
            await redis.connection_pool.disconnect()
            engine.dispose()

    asyncio.run(run())

    for report, cost in passes:
        assert report.looked_at <= BATCH
        # Bounded by the batch, not by the 3000-job backlog (the old pass enqueued all).
        assert cost["total"] <= BATCH + PER_ENQUEUE * len(report.requeued) + OVERHEAD, cost
    first, first_cost = passes[0]
    assert first.looked_at == BATCH and first.requeued == pending[:BATCH]
    queued = [j for report, _ in passes for j in report.requeued]
    assert sorted(queued) == pending, "every PENDING job queued exactly once"
    # Once Redis holds the whole backlog, a pass only asks: no enqueue at all.
    steady, steady_cost = passes[-1]
    assert steady.looked_at == BATCH and steady.requeued == []
    assert "multi" not in steady_cost and "watch" not in steady_cost, steady_cost
    assert steady_cost["total"] <= BATCH + OVERHEAD, steady_cost
    print(f"first pass: {first_cost['total']} commands; steady pass: "
          f"{steady_cost['total']} commands for a backlog of {BACKLOG}")
    # Keys of ended jobs are gone; the backlog's are all there.
    with redis_server.client() as client:
        assert not any(client.exists(f"arq:job:{arq_job_id(j)}") for j in ended)
        assert client.zcard(queue) == BACKLOG
    assert sorted(j for report, _ in passes for j in report.forgotten) == ended
