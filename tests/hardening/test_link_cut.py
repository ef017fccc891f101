"""The link to the remote cut mid-transfer (its sshd and every session killed), then
restored on the same port: retried with backoff and DONE; or, never restored, FAILED
with the reason after the last try. Never stuck RUNNING; nothing half-delivered counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.stack import Stack, wait_until
from tests.fixtures.trees import assert_trees_identical, tree_snapshot
from tests.hardening.conftest import FINAL, Link, event_types, submit, temp_files
from tests.service.conftest import Portals
from tests.service.test_e2e import SLOW_KIB_S, _big_tree, _wait_progress


def _far_portal(client: httpx.Client, link: Link, base: Path) -> int:
    server = link.server
    base.mkdir(parents=True)
    response = client.post("/portals", json={
        "name": "far", "kind": "ssh", "host": server.host, "port": server.port,
        "username": server.user, "base_path": str(base),
        "identity_file": str(server.identity_file),
        "known_hosts_file": str(server.known_hosts_file)})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def _retries(stack: Stack, client: httpx.Client, job_id: int) -> list[dict[str, Any]]:
    return [e for e in stack.events(client, job_id) if e["event_type"] == "retry"]


@pytest.mark.parametrize("strategy, crash", [("direct", False), ("zip_first", False),
                                             ("direct", True)],
                         ids=["direct-link-lost", "zip_first-link-lost", "direct-server-crash"])
def test_link_cut_and_restored_job_retries_and_finishes(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals, link: Link,
        tmp_path: Path, strategy: str, crash: bool) -> None:
    """``server-crash``: the remote rsync dies mid-file without cleaning up (its temp
    file stays in the staging dir); the delivered tree must still be exactly the source."""
    stack, client = ketter_stack, api_client
    far = _far_portal(client, link, tmp_path / "far")
    stack.start_worker(rsync_bwlimit_kib_s=SLOW_KIB_S, max_attempts=4, retry_backoff_s=1)
    source = _big_tree(portals.local_src_base, "Cut Mix", n_files=3, size=1024 * 1024)
    before = tree_snapshot(source)
    job = submit(client, portals, "Cut Mix", strategy=strategy, target_portal_id=far)
    _wait_progress(stack, client, job["id"], "send")

    link.cut(crash=crash)
    first = wait_until(lambda: _retries(stack, client, job["id"]), timeout=30,
                       what="a retry after the cut")[0]
    link.restore()

    final = stack.wait_job(client, job["id"], FINAL, timeout=90)
    assert final["status"] == "DONE", final
    assert final["attempts"] >= 2
    assert first["payload"]["error"]["transient"] is True
    assert first["payload"]["next_try_in_s"] == 1
    assert_trees_identical(source, tmp_path / "far" / "Cut Mix")
    assert tree_snapshot(source) == before
    assert temp_files(stack.env) == []


def test_link_cut_for_good_fails_after_the_last_try(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals, link: Link,
        tmp_path: Path) -> None:
    stack, client = ketter_stack, api_client
    far = _far_portal(client, link, tmp_path / "far")
    stack.start_worker(rsync_bwlimit_kib_s=SLOW_KIB_S, max_attempts=3, retry_backoff_s=0.5)
    source = _big_tree(portals.local_src_base, "Lost Mix", n_files=3, size=1024 * 1024)
    before = tree_snapshot(source)
    job = submit(client, portals, "Lost Mix", strategy="direct", mode="move",
                 target_portal_id=far)
    _wait_progress(stack, client, job["id"], "send")
    link.cut()

    final = stack.wait_job(client, job["id"], FINAL, timeout=60)
    assert final["status"] == "FAILED", final
    assert final["attempts"] == 3, final
    assert final["error_type"] == "SshConnectionError", final
    assert final["error_message"], final
    events = stack.events(client, job["id"])
    retries = [e for e in events if e["event_type"] == "retry"]
    assert [r["payload"]["next_try_in_s"] for r in retries] == [0.5, 1.0], retries  # backoff
    assert event_types(events)[-1] == "error"
    assert events[-1]["payload"]["attempts"] == 3
    assert tree_snapshot(source) == before, "a failed move must not touch the source"
    assert temp_files(stack.env) == []
