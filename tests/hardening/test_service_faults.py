"""Postgres and Redis failing under a running job: the worker reconnects, the final
state is recorded, no job is lost.

A Postgres restart is stood in for by ``pg_terminate_backend`` on every connection to
the test database (what clients see when the server restarts, without disturbing the
shared server other test sessions use). Redis is the private test server: stopped and
started again empty (no persistence), or flushed.
"""

from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.fixtures.redis import RedisServer
from tests.fixtures.stack import Stack, wait_until
from tests.fixtures.trees import assert_trees_identical, make_session_tree
from tests.hardening.conftest import FINAL, Freezer, event_types, submit, temp_files
from tests.service.conftest import Portals
from tests.service.test_e2e import SLOW_KIB_S, _big_tree, _wait_progress


def _terminate_all(db_engine: Engine) -> int:
    """Kill every other connection to the test database; returns how many."""
    with db_engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar_one())


@pytest.mark.parametrize("strategy", ["direct", "zip_first"])
def test_postgres_connections_killed_mid_job_worker_records_done(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals, db_engine: Engine,
        strategy: str) -> None:
    stack, client = ketter_stack, api_client
    stack.start_worker(rsync_bwlimit_kib_s=SLOW_KIB_S)
    source = _big_tree(portals.local_src_base, "Db Mix", n_files=4, size=1024 * 1024)
    job = submit(client, portals, "Db Mix", strategy=strategy)
    _wait_progress(stack, client, job["id"], "send")
    killed = 0
    for _ in range(6):  # a "restart" every 0.5 s while bytes move
        killed += _terminate_all(db_engine)
        time.sleep(0.5)
    assert killed >= 2  # the worker's pool (and the API's) really lost connections

    final = stack.wait_job(client, job["id"], FINAL, timeout=60)
    assert final["status"] == "DONE", final
    assert final["attempts"] == 1, "a lost DB connection is not a failed transfer"
    assert_trees_identical(source, portals.ssh_dst_base / "Db Mix")
    assert temp_files(stack.env) == []
    assert stack.processes[-1].alive


def test_postgres_connection_killed_while_recording_done(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals, freezer: Freezer
) -> None:
    """The connection dies inside the very transaction that writes DONE."""
    stack, client = ketter_stack, api_client
    source = make_session_tree(portals.local_src_base, "Final Mix", n_audio=4)
    job = submit(client, portals, "Final Mix", mode="move")
    freezer.at_event(job["id"], "done")
    worker = stack.start_worker()
    freezer.wait_frozen()
    freezer.release()  # terminates the backend mid-transaction, then drops the trigger

    final = stack.wait_job(client, job["id"], FINAL, timeout=60)
    assert final["status"] == "DONE", final
    assert final["attempts"] == 1
    assert event_types(stack.events(client, job["id"])).count("done") == 1
    assert not source.exists()
    assert (portals.ssh_dst_base / "Final Mix" / "Final Mix.ptx").is_file()
    assert worker.alive


@pytest.mark.parametrize("fault", ["restart", "flush"])
def test_redis_lost_mid_job_no_job_lost(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals,
        redis_server: RedisServer, fault: str) -> None:
    """One job running, one waiting in the queue; Redis loses everything. Both finish."""
    stack, client = ketter_stack, api_client
    worker = stack.start_worker(rsync_bwlimit_kib_s=SLOW_KIB_S, worker_max_jobs=1)
    running_src = _big_tree(portals.local_src_base, "Running Mix", n_files=3, size=1024 * 1024)
    queued_src = make_session_tree(portals.local_src_base, "Queued Mix", n_audio=3)
    running = submit(client, portals, "Running Mix", strategy="direct")
    _wait_progress(stack, client, running["id"], "send")
    queued = submit(client, portals, "Queued Mix")
    with stack.redis() as r:
        assert r.exists(f"arq:job:ketter-job-{queued['id']}")
        r.set("ketter:test:sentinel", b"1")
    if fault == "restart":
        redis_server.stop()
        time.sleep(1.0)
        redis_server.start()  # empty: no persistence
    else:
        redis_server.flushall()
    with stack.redis() as r:
        # Redis really lost everything. (The queued job's key itself is no proof: the
        # reconciler may already have queued it again by the time we look.)
        assert not r.exists("ketter:test:sentinel")

    jobs = [stack.wait_job(client, j["id"], FINAL, timeout=60) for j in (running, queued)]
    assert [j["status"] for j in jobs] == ["DONE", "DONE"], jobs
    assert_trees_identical(running_src, portals.ssh_dst_base / "Running Mix")
    assert_trees_identical(queued_src, portals.ssh_dst_base / "Queued Mix")
    # The worker lived through it (or, if arq gave up, a new one would be needed: not ok).
    assert worker.alive, worker.log_text()[-3000:]
    late = submit(client, portals, "Queued Mix", target_portal_id=portals.local_dst)
    wait_until(lambda: client.get(f"/jobs/{late['id']}").json()["status"] in FINAL,
               timeout=30, what="a job submitted after the fault to finish")
    assert client.get(f"/jobs/{late['id']}").json()["status"] == "DONE"
