"""Several LAB hosts on one Ketter: sites, routing, and per-portal limits, with real
worker processes on the test Postgres and private Redis.

Two sites on one machine: each site's portals point at directories only that site's
portals name, and each site's worker has its own ``KETTER_WORKER_SITE``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import httpx
from sqlalchemy import Engine, text

from mvp_core.dispatch import arq_job_id, site_queue
from tests.fixtures.stack import ServiceProcess, Stack, wait_until
from tests.fixtures.trees import assert_trees_identical, make_session_tree
from tests.hardening.conftest import FINAL, event_types, local_portal, submit_between

QUEUE = "ketter:test"  # KETTER_QUEUE_NAME of the test stack


def _worker_id(db_engine: Engine, worker: ServiceProcess) -> str:
    with db_engine.connect() as conn:
        return str(conn.execute(text("SELECT id FROM workers WHERE pid = :pid"),
                                {"pid": worker.pid}).scalar_one())


def test_jobs_run_at_their_site_and_wait_for_a_worker_there(
        ketter_stack: Stack, api_client: httpx.Client, tmp_path: Path,
        db_engine: Engine) -> None:
    stack, client = ketter_stack, api_client
    a_src = local_portal(client, "suite-a-src", tmp_path / "suite-a" / "src", site="suite-a")
    a_dst = local_portal(client, "suite-a-dst", tmp_path / "suite-a" / "dst", site="suite-a")
    b_src = local_portal(client, "suite-b-src", tmp_path / "suite-b" / "src", site="suite-b")
    b_dst = local_portal(client, "suite-b-dst", tmp_path / "suite-b" / "dst", site="suite-b")
    a_tree = make_session_tree(tmp_path / "suite-a" / "src", "A Mix", n_audio=3)
    b_tree = make_session_tree(tmp_path / "suite-b" / "src", "B Mix", n_audio=3)

    # A job that mixes the two sites' disks cannot run anywhere: 422 naming the field.
    mixed = client.post("/jobs", json={"source_portal_id": a_src, "source_path": "A Mix",
                                       "target_portal_id": b_dst, "target_path": ""})
    assert mixed.status_code == 422 and "different sites" in mixed.text, mixed.text

    worker_a = stack.start_worker(worker_site="suite-a")
    job_b = submit_between(client, b_src, "B Mix", b_dst)
    job_a = submit_between(client, a_src, "A Mix", a_dst)
    assert job_b["site"] == "suite-b" and "suite-b" in (job_b["waiting_reason"] or "")

    done_a = stack.wait_job(client, job_a["id"], FINAL)
    assert done_a["status"] == "DONE", done_a
    assert done_a["worker_id"] == _worker_id(db_engine, worker_a)
    assert_trees_identical(a_tree, tmp_path / "suite-a" / "dst" / "A Mix")

    # Even handed to site A's queue by mistake, site A's worker leaves B's job alone.
    with stack.redis() as r:
        name = arq_job_id(job_b["id"])
        r.delete(f"arq:job:{name}")
        r.zrem(site_queue(QUEUE, "suite-b"), name)
    _enqueue_raw(stack, job_b["id"], site_queue(QUEUE, "suite-a"))
    wait_until(lambda: not _on_queue(stack, job_b["id"], site_queue(QUEUE, "suite-a")),
               timeout=30, what="site A's worker to take B's job off its queue")
    waiting = client.get(f"/jobs/{job_b['id']}").json()
    assert waiting["status"] == "PENDING" and waiting["attempts"] == 0, waiting
    assert waiting["worker_id"] is None
    assert "no live worker at site 'suite-b'" in waiting["waiting_reason"], waiting
    assert "started" not in event_types(stack.events(client, job_b["id"]))
    assert not (tmp_path / "suite-b" / "dst" / "B Mix").exists()
    health = client.get("/health").json()
    assert health["sites"]["suite-b"] == {"ok": False, "workers_ok": 0, "workers_not_ok": 0,
                                          "pending": 1}, health
    assert health["sites"]["suite-a"]["ok"] is True and health["status"] == "degraded"

    worker_b = stack.start_worker(worker_site="suite-b")
    done_b = stack.wait_job(client, job_b["id"], FINAL)
    assert done_b["status"] == "DONE", done_b
    assert done_b["worker_id"] == _worker_id(db_engine, worker_b)
    assert_trees_identical(b_tree, tmp_path / "suite-b" / "dst" / "B Mix")
    assert client.get("/health").json()["status"] == "ok"


def _enqueue_raw(stack: Stack, job_id: int, queue: str) -> None:
    """Put the job on ``queue`` the way the API does (arq's own client)."""
    import asyncio

    from mvp_core.dispatch import enqueue, make_queue_redis

    async def go() -> None:
        redis = make_queue_redis(stack.redis_url, queue_name=queue)
        try:
            assert await enqueue(redis, job_id=job_id, queue_name=queue)
        finally:
            await redis.aclose()
            await redis.connection_pool.disconnect()

    asyncio.run(go())


def _on_queue(stack: Stack, job_id: int, queue: str) -> bool:
    with stack.redis() as r:
        return r.zscore(queue, arq_job_id(job_id)) is not None


def test_site_check_of_a_missing_source_fails_the_job_on_its_worker(
        ketter_stack: Stack, api_client: httpx.Client, tmp_path: Path) -> None:
    """The API host need not see a LAB's disk: the site's worker checks, FAILED + one event."""
    stack, client = ketter_stack, api_client
    src = local_portal(client, "lab-src", tmp_path / "lab" / "src", site="lab")
    dst = local_portal(client, "lab-dst", tmp_path / "lab" / "dst", site="lab")
    make_session_tree(tmp_path / "lab" / "dst", "Taken", n_audio=1)
    make_session_tree(tmp_path / "lab" / "src", "Taken", n_audio=1)
    missing = submit_between(client, src, "No Such Mix", dst)  # stored: the API does not look
    taken = submit_between(client, src, "Taken", dst)
    stack.start_worker(worker_site="lab")
    for job, needle in ((missing, "does not exist"), (taken, "already exists")):
        final = stack.wait_job(client, job["id"], FINAL)
        assert final["status"] == "FAILED" and needle in final["error_message"], final
        assert final["attempts"] == 1
        errors = [e for e in stack.events(client, job["id"]) if e["event_type"] == "error"]
        assert len(errors) == 1 and needle in errors[0]["message"], errors


def test_portal_limit_of_one_runs_five_jobs_one_at_a_time_in_order(
        ketter_stack: Stack, api_client: httpx.Client, tmp_path: Path) -> None:
    stack, client = ketter_stack, api_client
    src = local_portal(client, "nas-src", tmp_path / "src")
    dst = local_portal(client, "nas", tmp_path / "nas", max_concurrent_jobs=1)
    for i in range(5):
        make_session_tree(tmp_path / "src", f"Mix {i}", n_audio=3)
    jobs = [submit_between(client, src, f"Mix {i}", dst) for i in range(5)]
    # One worker that could run all five at once.
    stack.start_worker(worker_max_jobs=5)
    finals = [stack.wait_job(client, j["id"], FINAL, timeout=90) for j in jobs]
    assert [f["status"] for f in finals] == ["DONE"] * 5, finals
    started = [datetime.fromisoformat(f["started_at"]) for f in finals]
    finished = [datetime.fromisoformat(f["finished_at"]) for f in finals]
    assert started == sorted(started), "jobs started out of order"
    for i in range(1, 5):
        assert started[i] >= finished[i - 1], f"job {i} started before job {i - 1} ended"
    waits = [e for e in stack.events(client, jobs[4]["id"])
             if e["payload"].get("reason") == "portal_limit"]
    assert len(waits) == 1 and "'nas'" in waits[0]["message"], waits
