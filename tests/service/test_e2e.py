"""End to end: a real uvicorn API, real arq worker processes, Postgres, private Redis, sshd.

Slow transfers (to cancel or kill them mid-way) use the worker setting
``KETTER_RSYNC_BWLIMIT_KIB_S``, so the trees stay small.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.stack import ApiProcess, Stack, free_port, start_api_process, wait_until
from tests.fixtures.trees import assert_trees_identical, make_session_tree, tree_snapshot
from tests.service.conftest import Portals, create_portals

FINAL = frozenset({"DONE", "FAILED", "CANCELLED"})
SLOW_KIB_S = 1024  # ~1 MiB/s: an 8 MiB send lasts ~8 s


def _big_tree(parent: Path, name: str, n_files: int, size: int) -> Path:
    root = parent / name / "Audio Files"
    root.mkdir(parents=True)
    for i in range(n_files):
        (root / f"Take_{i:03d}.wav").write_bytes(os.urandom(size))
    return parent / name


def _types(events: list[dict[str, Any]]) -> list[str]:
    return [e["event_type"] for e in events]


def _temp_zips(env: dict[str, str]) -> list[Path]:
    found: list[Path] = []
    for key in ("KETTER_TEMP_DIR", "KETTER_REMOTE_TEMP_DIR"):
        d = Path(env[key])
        if d.exists():
            found += [p for p in d.rglob("*") if p.is_file()]
    return found


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


@pytest.fixture(scope="module")
def shared_api(database_url: str, redis_server: Any,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    """One API for the module (tests empty the tables; workers are per test)."""
    env = {"KETTER_DATABASE_URL": database_url, "KETTER_REDIS_URL": redis_server.url,
           "KETTER_QUEUE_NAME": "ketter:test", "KETTER_HEARTBEAT_GRACE_S": "3"}
    api = start_api_process(env, tmp_path_factory.mktemp("api") / "api.log")
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture
def api_client(ketter_stack: Stack, shared_api: ApiProcess) -> httpx.Client:
    assert ketter_stack.env["KETTER_QUEUE_NAME"] == "ketter:test"
    ketter_stack.attach(shared_api)
    return ketter_stack.client(shared_api)


@pytest.fixture
def portals(api_client: httpx.Client, tmp_path: Path, sshd: Any) -> Portals:
    return create_portals(api_client, tmp_path / "portals", sshd)


def _submit(client: httpx.Client, portals: Portals, source: str, **extra: Any) -> dict[str, Any]:
    body = {"source_portal_id": portals.local_src, "source_path": source,
            "target_portal_id": portals.ssh_dst, "target_path": "", **extra}
    response = client.post("/jobs", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def _wait_progress(stack: Stack, client: httpx.Client, job_id: int,
                   phase: str) -> dict[str, Any]:
    """Until the job is RUNNING in ``phase`` with some bytes moved; returns the job."""
    def moving() -> dict[str, Any] | None:
        job = client.get(f"/jobs/{job_id}").json()
        assert job["status"] not in FINAL, job
        events = stack.events(client, job_id)
        in_phase = any(e["event_type"] == "phase" and e["payload"]["phase"] == phase
                       and e["payload"]["status"] == "started" for e in events)
        return job if in_phase and job["progress_bytes"] > 0 else None
    return dict(wait_until(moving, timeout=30, interval=0.1,
                           what=f"job {job_id} moving bytes in {phase}"))


# --------------------------------------------------------------------------- happy path


def test_direct_and_zip_first_to_ssh_portal(ketter_stack: Stack, api_client: httpx.Client,
                                            portals: Portals) -> None:
    stack, client = ketter_stack, api_client
    stack.start_worker()
    a = make_session_tree(portals.local_src_base, "Mix A", n_audio=30)
    b = make_session_tree(portals.local_src_base, "Mix B", n_audio=30)
    single = portals.local_src_base / "notes.txt"
    single.write_text("one small file\n")

    direct = _submit(client, portals, "Mix A", strategy="direct")
    zipped = _submit(client, portals, "Mix B", strategy="zip_first")
    done = {j["id"]: stack.wait_job(client, j["id"], FINAL, timeout=60) for j in (direct, zipped)}
    one = _submit(client, portals, "notes.txt")  # on an idle worker: measures our overhead
    done[one["id"]] = stack.wait_job(client, one["id"], FINAL, timeout=30)
    moved_tree = make_session_tree(portals.local_src_base, "Mix M", n_audio=4)
    moved_before = tree_snapshot(moved_tree)
    moved = _submit(client, portals, "Mix M", mode="move")
    assert stack.wait_job(client, moved["id"], FINAL, timeout=30)["status"] == "DONE"
    assert not moved_tree.exists()  # deleted only after the copy was verified
    assert tree_snapshot(portals.ssh_dst_base / "Mix M") == moved_before
    assert {j["status"] for j in done.values()} == {"DONE"}, done

    assert_trees_identical(a, portals.ssh_dst_base / "Mix A")
    assert_trees_identical(b, portals.ssh_dst_base / "Mix B")
    assert (portals.ssh_dst_base / "notes.txt").read_text() == "one small file\n"
    assert _temp_zips(stack.env) == []

    for job, strategy, phases in ((direct, "DIRECT", {"send", "verify"}),
                                  (zipped, "ZIP_FIRST", {"zip", "send", "unzip", "verify"})):
        final = done[job["id"]]
        assert final["strategy"] == strategy
        assert final["files_copied"] == final["n_files"] == 30 + 3 + 3  # audio, fades, ptx+bak+sh
        assert final["bytes_copied"] == final["total_bytes"] > 0
        assert final["progress_percent"] == 100.0 and final["attempts"] == 1
        assert final["duration_s"] > 0 and final["throughput_bytes_per_s"] > 0
        assert _ts(final["finished_at"]) >= _ts(final["started_at"]) >= _ts(final["created_at"])
        events = stack.events(client, job["id"])
        types = _types(events)
        assert types[:4] == ["created", "queued", "started", "plan"], types
        assert types[-1] == "done"
        plan = events[3]["payload"]
        assert plan["strategy"] == strategy and plan["n_files"] == final["n_files"]
        assert plan["total_bytes"] == final["total_bytes"] and plan["avg_size_bytes"] > 0
        ended = {e["payload"]["phase"] for e in events
                 if e["event_type"] == "phase" and e["payload"]["status"] == "done"}
        assert phases <= ended, ended
        assert all(e["payload"]["duration_s"] is not None for e in events
                   if e["event_type"] == "phase" and e["payload"]["status"] == "done")
        assert events[-1]["payload"]["strategy"] == strategy
        # a 30-file tree is far under the 64 MiB a second stream must carry: one rsync
        assert events[-1]["payload"]["streams"] == 1
        # issue 19: the path facts are in the done event; a small job is not probed
        assert events[-1]["payload"]["rtt_ms"] is None
        assert events[-1]["payload"]["connections"] in (0, 1)
        assert events[-1]["payload"]["send_rate_bytes_per_s"] is None or strategy == "DIRECT"

    health = client.get("/health").json()
    assert health["status"] == "ok" and health["worker_ok"] is True
    assert health["worker_heartbeat_age_s"] < 3

    # Overhead of the service around a 1-file transfer (printed for the report).
    small = done[one["id"]]
    wall = (_ts(small["finished_at"]) - _ts(small["created_at"])).total_seconds()
    print(f"\n1-file job: created->finished {wall:.3f}s, engine {small['duration_s']:.3f}s, "
          f"overhead {wall - small['duration_s']:.3f}s")


def test_from_ssh_portal_and_local_to_local(ketter_stack: Stack, api_client: httpx.Client,
                                            portals: Portals) -> None:
    stack, client = ketter_stack, api_client
    stack.start_worker()
    remote = make_session_tree(portals.ssh_dst_base, "Returned Mix", n_audio=4)
    local = make_session_tree(portals.local_src_base, "Local Mix", n_audio=4)
    pulled = _submit(client, portals, "Returned Mix", source_portal_id=portals.ssh_dst,
                     target_portal_id=portals.local_dst, target_path="back")
    copied = _submit(client, portals, "Local Mix", target_portal_id=portals.local_dst,
                     strategy="zip_first")
    for job in (pulled, copied):
        assert stack.wait_job(client, job["id"], FINAL, timeout=30)["status"] == "DONE"
    assert_trees_identical(remote, portals.local_dst_base / "back" / "Returned Mix")
    assert_trees_identical(local, portals.local_dst_base / "Local Mix")
    plan = next(e for e in stack.events(client, pulled["id"]) if e["event_type"] == "plan")
    assert plan["payload"]["strategy"] == "DIRECT" and "remote" in plan["payload"]["reason"]


def test_same_target_never_written_by_two_jobs_at_once(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals) -> None:
    stack, client = ketter_stack, api_client
    stack.start_worker(rsync_bwlimit_kib_s=4 * SLOW_KIB_S)
    _big_tree(portals.local_src_base, "Stems", n_files=4, size=1024 * 1024)
    # Both write Stems; whichever runs second replaces the first's delivery.
    first = _submit(client, portals, "Stems", strategy="direct", on_existing="replace")
    second = _submit(client, portals, "Stems", strategy="direct", on_existing="replace")
    jobs = [stack.wait_job(client, j["id"], FINAL, timeout=60) for j in (first, second)]
    assert [j["status"] for j in jobs] == ["DONE", "DONE"], jobs
    jobs.sort(key=lambda j: j["started_at"])
    assert _ts(jobs[1]["started_at"]) >= _ts(jobs[0]["finished_at"]), jobs
    waited = [e for j in jobs for e in stack.events(client, j["id"])
              if e["payload"].get("reason") == "target_busy"]
    assert waited, "the second job should have waited for the target"
    assert_trees_identical(portals.local_src_base / "Stems", portals.ssh_dst_base / "Stems")


# --------------------------------------------------------------------------- cancel


def test_cancel_mid_transfer_cleans_temp_and_keeps_source(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals) -> None:
    stack, client = ketter_stack, api_client
    stack.start_worker(rsync_bwlimit_kib_s=SLOW_KIB_S)
    source = _big_tree(portals.local_src_base, "Long Mix", n_files=8, size=1024 * 1024)
    before = tree_snapshot(source)
    job = _submit(client, portals, "Long Mix", strategy="zip_first", mode="move")
    running = _wait_progress(stack, client, job["id"], "send")
    assert running["status"] == "RUNNING" and running["strategy"] == "ZIP_FIRST"
    assert 0 < running["progress_percent"] < 100  # zip done, send under way
    wait_until(lambda: any(e["event_type"] == "progress" and e["payload"]["phase"] == "send"
                           for e in stack.events(client, job["id"])),
               timeout=10, what="a progress event")
    assert _temp_zips(stack.env), "a zip should exist while it is being sent"

    asked = time.monotonic()
    response = client.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 200 and response.json()["cancel_requested"] is True
    final = stack.wait_job(client, job["id"], FINAL, timeout=20)
    took = time.monotonic() - asked
    assert final["status"] == "CANCELLED", final
    assert took < 10, f"cancel took {took:.1f}s"
    assert tree_snapshot(source) == before  # a cancelled move deletes nothing
    assert _temp_zips(stack.env) == []
    assert _types(stack.events(client, job["id"]))[-1] == "cancelled"


def test_cancelled_pending_job_never_starts(ketter_stack: Stack, api_client: httpx.Client,
                                            portals: Portals) -> None:
    stack, client = ketter_stack, api_client
    make_session_tree(portals.local_src_base, "Mix C", n_audio=3)
    job = _submit(client, portals, "Mix C")
    assert client.post(f"/jobs/{job['id']}/cancel").json()["status"] == "CANCELLED"
    stack.start_worker()
    with stack.redis() as r:  # the worker took the arq job and dropped it
        wait_until(lambda: not r.exists(f"arq:job:ketter-job-{job['id']}"), timeout=15,
                   what="the worker to consume the arq job")
    time.sleep(1.5)  # a reconcile round too
    final = client.get(f"/jobs/{job['id']}").json()
    assert final["status"] == "CANCELLED" and final["attempts"] == 0
    assert final["started_at"] is None
    assert "started" not in _types(stack.events(client, job["id"]))
    assert not (portals.ssh_dst_base / "Mix C").exists()


# --------------------------------------------------------------------------- crashes


@pytest.mark.parametrize("strategy", ["zip_first", "direct"])
def test_worker_kill9_mid_transfer_new_worker_finishes(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals, strategy: str) -> None:
    stack, client = ketter_stack, api_client
    first = stack.start_worker(rsync_bwlimit_kib_s=SLOW_KIB_S)
    source = _big_tree(portals.local_src_base, "Crash Mix", n_files=8, size=1024 * 1024)
    job = _submit(client, portals, "Crash Mix", strategy=strategy)
    _wait_progress(stack, client, job["id"], "send")

    first.kill9()
    assert client.get(f"/jobs/{job['id']}").json()["status"] == "RUNNING"  # the truth so far
    stack.start_worker()
    final = stack.wait_job(client, job["id"], FINAL, timeout=60)
    assert final["status"] == "DONE", final
    assert final["attempts"] == 2
    assert_trees_identical(source, portals.ssh_dst_base / "Crash Mix")
    assert _temp_zips(stack.env) == []
    types = _types(stack.events(client, job["id"]))
    assert "recovered" in types and types.count("started") == 2 and types[-1] == "done"


def test_worker_sigterm_gives_job_back_new_worker_finishes(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals) -> None:
    stack, client = ketter_stack, api_client
    first = stack.start_worker(rsync_bwlimit_kib_s=SLOW_KIB_S)
    source = _big_tree(portals.local_src_base, "Stop Mix", n_files=6, size=1024 * 1024)
    job = _submit(client, portals, "Stop Mix", strategy="direct")
    _wait_progress(stack, client, job["id"], "send")
    first.proc.terminate()
    first.proc.wait(timeout=40)
    back = client.get(f"/jobs/{job['id']}").json()
    assert back["status"] == "PENDING" and back["worker_id"] is None, back
    assert "shutting down" in stack.events(client, job["id"])[-1]["message"]
    # Kept for the resume (a 300 GB render must not start again from 0 %).
    staged = portals.ssh_dst_base / stack.staging_name(job["id"]) / "Stop Mix"
    kept = [p for p in staged.rglob("*") if p.is_file()]
    assert kept, "a graceful shutdown keeps what was staged"
    stack.start_worker()
    final = stack.wait_job(client, job["id"], FINAL, timeout=30)
    assert final["status"] == "DONE" and final["attempts"] == 2, final
    assert_trees_identical(source, portals.ssh_dst_base / "Stop Mix")


def test_redis_flushed_after_submit_job_still_runs(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals) -> None:
    stack, client = ketter_stack, api_client
    source = make_session_tree(portals.local_src_base, "Mix D", n_audio=5)
    # The job's site is its local portal's: the API queues it there though no worker
    # runs yet (one that names no site is queued only where a worker is live).
    assert client.patch(f"/portals/{portals.local_src}", json={"site": "lab"}).status_code == 200
    job = _submit(client, portals, "Mix D")
    with stack.redis() as r:
        assert r.exists(f"arq:job:ketter-job-{job['id']}")
        r.flushall()
        assert not r.exists(f"arq:job:ketter-job-{job['id']}")
    stack.start_worker(worker_site="lab")
    final = stack.wait_job(client, job["id"], FINAL, timeout=30)
    assert final["status"] == "DONE", final
    assert_trees_identical(source, portals.ssh_dst_base / "Mix D")


def test_job_picked_by_a_worker_that_died_before_claiming_it_still_runs(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals) -> None:
    """arq marked the job in progress (for the whole job timeout), Postgres says PENDING."""
    stack, client = ketter_stack, api_client
    source = make_session_tree(portals.local_src_base, "Mix H", n_audio=3)
    job = _submit(client, portals, "Mix H")
    with stack.redis() as r:  # what a worker leaves when it dies right after picking the job
        r.set(f"arq:in-progress:ketter-job-{job['id']}", b"1", px=24 * 3600 * 1000)
    stack.start_worker()
    final = stack.wait_job(client, job["id"], FINAL, timeout=30)
    assert final["status"] == "DONE" and final["attempts"] == 1, final
    assert_trees_identical(source, portals.ssh_dst_base / "Mix H")


def test_source_swapped_for_escaping_symlink_fails_at_run_time(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals, tmp_path: Path) -> None:
    stack, client = ketter_stack, api_client
    make_session_tree(portals.local_src_base, "Mix G", n_audio=2)
    job = _submit(client, portals, "Mix G")
    secret = make_session_tree(tmp_path / "elsewhere", "Not Yours", n_audio=1)
    shutil.rmtree(portals.local_src_base / "Mix G")
    os.symlink(secret, portals.local_src_base / "Mix G")  # after the API checked it
    stack.start_worker()
    final = stack.wait_job(client, job["id"], FINAL, timeout=30)
    assert final["status"] == "FAILED" and "outside the portal base" in final["error_message"]
    assert not (portals.ssh_dst_base / "Mix G").exists()
    assert _types(stack.events(client, job["id"]))[-1] == "error"


# --------------------------------------------------------------------------- failures


def test_job_outliving_its_timeout_fails_and_cleans_up(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals) -> None:
    stack, client = ketter_stack, api_client
    stack.start_worker(rsync_bwlimit_kib_s=SLOW_KIB_S, job_timeout_s=2)
    source = _big_tree(portals.local_src_base, "Endless Mix", n_files=6, size=1024 * 1024)
    before = tree_snapshot(source)
    job = _submit(client, portals, "Endless Mix", strategy="zip_first", mode="move")
    final = stack.wait_job(client, job["id"], FINAL, timeout=30)
    assert final["status"] == "FAILED" and final["error_type"] == "JobTimeoutError", final
    assert "timed out after 2s" in final["error_message"]
    assert tree_snapshot(source) == before
    assert _temp_zips(stack.env) == []


def test_transient_failure_retried_then_failed_permanent_at_once(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals, sshd: Any,
        tmp_path: Path, wrong_known_hosts: Path) -> None:
    stack, client = ketter_stack, api_client
    stack.start_worker(max_attempts=2)
    make_session_tree(portals.local_src_base, "Mix E", n_audio=3)
    make_session_tree(portals.local_src_base, "Mix F", n_audio=3)
    dead_port = free_port()  # nobody listens there
    dead = client.post("/portals", json={
        "name": "unreachable", "kind": "ssh", "host": "127.0.0.1", "port": dead_port,
        "username": sshd.user, "base_path": str(tmp_path / "nowhere"),
        "identity_file": str(sshd.identity_file), "known_hosts_file": str(sshd.known_hosts_file),
    }).json()
    unreachable = _submit(client, portals, "Mix E", target_portal_id=dead["id"])
    final = stack.wait_job(client, unreachable["id"], FINAL, timeout=60)
    assert final["status"] == "FAILED" and final["attempts"] == 2, final
    assert final["error_type"] == "SshConnectionError"
    events = stack.events(client, unreachable["id"])
    retries = [e for e in events if e["event_type"] == "retry"]
    assert len(retries) == 1 and retries[0]["payload"]["error"]["transient"] is True
    error = events[-1]
    assert error["event_type"] == "error" and error["level"] == "error"
    assert error["payload"]["error_type"] == "SshConnectionError"
    assert {"message", "exit_code", "stderr_tail"} <= error["payload"].keys()

    impostor = client.post("/portals", json={
        "name": "impostor", "kind": "ssh", "host": sshd.host, "port": sshd.port,
        "username": sshd.user, "base_path": str(portals.ssh_dst_base),
        "identity_file": str(sshd.identity_file), "known_hosts_file": str(wrong_known_hosts),
    }).json()
    refused = _submit(client, portals, "Mix F", target_portal_id=impostor["id"])
    final = stack.wait_job(client, refused["id"], FINAL, timeout=30)
    assert final["status"] == "FAILED" and final["attempts"] == 1, final
    assert final["error_type"] == "SshAuthError"
    assert "retry" not in _types(stack.events(client, refused["id"]))
    assert not (portals.ssh_dst_base / "Mix F").exists()
