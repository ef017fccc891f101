"""Atomic delivery through the real service: API process, arq worker, Postgres, sshd.

The API refuses (422) a job whose output name exists on a local target; on an ssh
target the worker finds it and the job ends FAILED with the reason. ``on_existing``
is stored and shown. A killed worker leaves only the hidden staging dir, which the
next attempt resumes; staging dirs of ended jobs are swept by the reconciler.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from tests.delivery.conftest import entries
from tests.fixtures.stack import Stack, wait_until
from tests.fixtures.trees import assert_trees_identical, make_session_tree, tree_snapshot
from tests.service.conftest import Portals

FINAL = frozenset({"DONE", "FAILED", "CANCELLED"})


def _body(portals: Portals, source: str, *, ssh: bool, **extra: Any) -> dict[str, Any]:
    return {"source_portal_id": portals.local_src, "source_path": source,
            "target_portal_id": portals.ssh_dst if ssh else portals.local_dst,
            "target_path": "", **extra}


def _old(final: Path) -> dict[str, tuple[str, int, int, str]]:
    final.mkdir(parents=True)
    (final / "old take.wav").write_bytes(b"RIFF yesterday")
    return tree_snapshot(final)


def test_api_refuses_an_existing_local_target_and_replace_is_explicit(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals) -> None:
    client = api_client
    src = make_session_tree(portals.local_src_base, "Mix A", n_audio=4)
    old = _old(portals.local_dst_base / "Mix A")

    refused = client.post("/jobs", json=_body(portals, "Mix A", ssh=False))
    assert refused.status_code == 422, refused.text
    assert "already exists" in refused.json()["detail"][0]["msg"]
    assert client.get("/jobs").json() == []  # nothing stored
    bad = client.post("/jobs", json=_body(portals, "Mix A", ssh=False, on_existing="overwrite"))
    assert bad.status_code == 422

    created = client.post("/jobs", json=_body(portals, "Mix A", ssh=False,
                                              on_existing="replace"))
    assert created.status_code == 201, created.text
    assert created.json()["on_existing"] == "replace"
    assert tree_snapshot(portals.local_dst_base / "Mix A") == old  # untouched until run
    ketter_stack.start_worker()
    done = ketter_stack.wait_job(client, created.json()["id"], FINAL)
    assert done["status"] == "DONE", done
    assert client.get(f"/jobs/{done['id']}").json()["on_existing"] == "replace"
    assert_trees_identical(src, portals.local_dst_base / "Mix A")
    # The staging root (marker, the replaced tree) goes right after DONE is recorded.
    wait_until(lambda: entries(portals.local_dst_base) == ["Mix A"], timeout=10,
               what="only the delivered tree left")
    phases = [(e["payload"].get("phase"), e["payload"].get("status"))
              for e in ketter_stack.events(client, done["id"])]
    assert ("deliver", "done") in phases


def test_existing_ssh_target_fails_with_the_reason_and_orphans_are_swept(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals) -> None:
    stack, client = ketter_stack, api_client
    make_session_tree(portals.local_src_base, "Mix B", n_audio=3)
    remote = portals.ssh_dst_base
    old = _old(remote / "Mix B")
    job = client.post("/jobs", json=_body(portals, "Mix B", ssh=True))
    assert job.status_code == 201, job.text  # a remote target cannot be checked at submit
    assert job.json()["on_existing"] == "fail"
    stack.start_worker()
    failed = stack.wait_job(client, job.json()["id"], FINAL)
    assert failed["status"] == "FAILED" and failed["attempts"] == 1, failed
    assert failed["error_type"] == "TargetExistsError", failed
    assert "already exists; nothing was written" in failed["error_message"]
    error = [e for e in stack.events(client, failed["id"]) if e["event_type"] == "error"]
    assert error and error[-1]["payload"]["code"] == "target_exists"
    assert tree_snapshot(remote / "Mix B") == old
    assert entries(remote) == ["Mix B"]

    # A staging dir this ended job left (say its host was unreachable at cleanup),
    # next to one no Ketter job owns.
    orphan = remote / stack.staging_name(failed["id"])
    (orphan / "Mix B").mkdir(parents=True)
    (orphan / "Mix B" / "half.wav").write_bytes(os.urandom(1000))
    (remote / ".ketter-job-999999").mkdir()
    # Another installation sharing this target, with a job of the same id: its live
    # staging dir is not ours to sweep.
    theirs = remote / f".ketter-0ther1d5-job-{failed['id']}"
    (theirs / "Mix B").mkdir(parents=True)
    stack.start_worker()  # its reconciler sweeps at start-up
    wait_until(lambda: not orphan.exists(), timeout=45, what="the orphan staging dir swept")
    # The event is written just after the directory goes: wait for it too.
    swept = wait_until(lambda: [e for e in stack.events(client, failed["id"])
                                if e["payload"].get("staging") == orphan.name],
                       timeout=10, what="the sweep's event")
    assert swept and "orphan of a FAILED job" in swept[0]["message"], swept
    assert entries(remote) == [theirs.name, ".ketter-job-999999", "Mix B"]  # not ours
    assert tree_snapshot(remote / "Mix B") == old


def test_killed_worker_leaves_only_staging_and_the_retry_delivers(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals) -> None:
    stack, client = ketter_stack, api_client
    root = portals.local_src_base / "Long Mix" / "Audio Files"
    root.mkdir(parents=True)
    for i in range(4):
        (root / f"Take_{i}.wav").write_bytes(os.urandom(512 * 1024))
    source = root.parent
    job = client.post("/jobs", json=_body(portals, "Long Mix", ssh=True, strategy="direct"))
    assert job.status_code == 201, job.text
    worker = stack.start_worker(rsync_bwlimit_kib_s=512, heartbeat_grace_s=1.5)
    remote = portals.ssh_dst_base
    staging = remote / wait_until(lambda: _staging_name(stack, job.json()["id"]), timeout=30,
                                  what="the installation id")
    wait_until(lambda: any(p.is_file() for p in staging.rglob("*")), timeout=30,
               what="bytes arriving in the staging dir")
    assert not (remote / "Long Mix").exists()
    worker.kill9()
    assert entries(remote) == [staging.name]  # nothing under the final name

    stack.start_worker(heartbeat_grace_s=1.5)
    done = stack.wait_job(client, job.json()["id"], FINAL, timeout=60)
    assert done["status"] == "DONE" and done["attempts"] == 2, done
    assert_trees_identical(source, remote / "Long Mix")
    wait_until(lambda: entries(remote) == ["Long Mix"], timeout=10,
               what="only the delivered tree left")


def _staging_name(stack: Stack, job_id: int) -> str | None:
    """None until the first worker made the installation id."""
    try:
        return stack.staging_name(job_id)
    except Exception:  # noqa: BLE001 - sqlalchemy's NoResultFound before the worker starts
        return None
