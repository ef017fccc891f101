"""A Redis outage of any length: the worker rides it out.

The private test Redis is stopped while a transfer runs (held at an exact moment by the
freezer, not by timing), the transfer ends during the outage, a job is submitted
during it. Nothing exits, nothing is aborted, the transfer finishes in its first
attempt, and the job submitted meanwhile starts within seconds of Redis coming back.
While Redis is away, ``/health`` shows the worker as not polling, not ok.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.redis import RedisServer
from tests.fixtures.stack import Stack, wait_until
from tests.fixtures.trees import assert_trees_identical, make_session_tree
from tests.hardening.conftest import FINAL, Freezer, local_portal, submit_between

# Generous: Redis back -> poll loop reconnects (backoff capped at 1 s) and the reconciler
# runs at once; the bound leaves room for a loaded CI machine.
START_AFTER_REDIS_BACK_S = 15.0


def _worker_health(client: httpx.Client) -> dict[str, Any]:
    workers = client.get("/health").json()["workers"]
    assert len(workers) == 1, workers
    return dict(workers[0])


@pytest.mark.parametrize("outage_s", [3, 60])
def test_worker_rides_out_a_redis_outage(
        ketter_stack: Stack, api_client: httpx.Client, tmp_path: Path,
        redis_server: RedisServer, freezer: Freezer, outage_s: int) -> None:
    stack, client = ketter_stack, api_client
    src = local_portal(client, "lab-src", tmp_path / "src", site="lab")
    dst = local_portal(client, "lab-dst", tmp_path / "dst", site="lab")
    long_tree = make_session_tree(tmp_path / "src", "Long Mix", n_audio=4)
    late_tree = make_session_tree(tmp_path / "src", "Late Mix", n_audio=2)
    long_job = submit_between(client, src, "Long Mix", dst)
    freezer.at_phase_event(long_job["id"], "verify", "started")  # the transfer, held
    worker = stack.start_worker(worker_site="lab")
    freezer.wait_frozen()
    assert _worker_health(client)["ok"] is True

    redis_server.stop()
    outage_began = time.monotonic()
    wait_until(lambda: _worker_health(client)["polling"] is False, timeout=10,
               what="/health to show the worker not polling")
    health = client.get("/health").json()
    assert health["workers"][0]["ok"] is False and health["worker_ok"] is False
    late_job = submit_between(client, src, "Late Mix", dst)  # stored; Redis cannot take it
    time.sleep(max(outage_s / 2 - (time.monotonic() - outage_began), 0))
    freezer.release()  # the transfer goes on and ends while Redis is still away
    stack.wait_job(client, long_job["id"], FINAL, timeout=60)
    time.sleep(max(outage_s - (time.monotonic() - outage_began), 0))
    assert client.get(f"/jobs/{late_job['id']}").json()["status"] == "PENDING"
    assert worker.alive, worker.log_text()[-3000:]

    redis_server.start()  # empty: no persistence
    back = time.monotonic()
    wait_until(lambda: client.get(f"/jobs/{late_job['id']}").json()["status"] != "PENDING",
               timeout=START_AFTER_REDIS_BACK_S + 5, interval=0.1,
               what="the job submitted during the outage to start")
    started_after_s = time.monotonic() - back
    print(f"outage {outage_s}s: late job started {started_after_s:.2f}s after Redis came back")
    assert started_after_s < START_AFTER_REDIS_BACK_S

    long_final = client.get(f"/jobs/{long_job['id']}").json()
    assert long_final["status"] == "DONE" and long_final["attempts"] == 1, long_final
    assert_trees_identical(long_tree, tmp_path / "dst" / "Long Mix")
    late_final = stack.wait_job(client, late_job["id"], FINAL, timeout=60)
    assert late_final["status"] == "DONE" and late_final["attempts"] == 1, late_final
    assert_trees_identical(late_tree, tmp_path / "dst" / "Late Mix")
    wait_until(lambda: _worker_health(client)["ok"], timeout=10,
               what="/health to show the worker ok again")
    assert worker.alive
