"""Target disk full (a real 2 MiB tmpfs as the target, or as the remote temp dir):
FAILED with "no space" in the error, no temp zip left, the source intact (moves too),
and nothing left at the target: no partial tree under the final name, no staging dir."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.stack import Stack
from tests.fixtures.system import mounted_tmpfs
from tests.fixtures.trees import make_session_tree, tree_snapshot
from tests.hardening.conftest import FINAL, event_types, submit, temp_files
from tests.service.conftest import Portals


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (we run as root in CI and here), unmounted whatever happens."""
    with mounted_tmpfs(tmp_path / "tiny", "2m") as mnt:
        yield mnt


def _ssh_portal(client: httpx.Client, sshd: object, base: Path, name: str) -> int:
    response = client.post("/portals", json={
        "name": name, "kind": "ssh", "host": sshd.host, "port": sshd.port,  # type: ignore[attr-defined]
        "username": sshd.user, "base_path": str(base),  # type: ignore[attr-defined]
        "identity_file": str(sshd.identity_file),  # type: ignore[attr-defined]
        "known_hosts_file": str(sshd.known_hosts_file)})  # type: ignore[attr-defined]
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def _half_written(source: Path, dest: Path) -> list[str]:
    """Files under their real name at the destination whose bytes differ from the source."""
    bad = []
    for dirpath, _dirs, files in os.walk(dest):
        for name in files:
            got = Path(dirpath) / name
            rel = got.relative_to(dest)
            if ".ketter-partial" in rel.parts:
                continue  # rsync's aside for interrupted files, never a real name
            want = source / rel
            if not want.is_file() or want.read_bytes() != got.read_bytes():
                bad.append(str(rel))
    return bad


CASES = {
    "direct-copy": ("direct", "copy", "target"),
    "direct-move": ("direct", "move", "target"),
    "zip_first-move": ("zip_first", "move", "target"),
    "zip_first-remote-temp-full": ("zip_first", "move", "remote_temp"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_target_disk_full_fails_cleanly(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals, sshd: object,
        tiny_disk: Path, case: str) -> None:
    strategy, mode, full = CASES[case]
    stack, client = ketter_stack, api_client
    if full == "remote_temp":
        stack.start_worker(remote_temp_dir=str(tiny_disk / "ketter_tmp"))
        target = portals.ssh_dst
        dest_root = portals.ssh_dst_base
    else:
        stack.start_worker()
        target = _ssh_portal(client, sshd, tiny_disk, "tiny")
        dest_root = tiny_disk
    source = make_session_tree(portals.local_src_base, "Big Mix", n_audio=12,
                               audio_size=256 * 1024)  # ~3 MiB: does not fit in 2 MiB
    before = tree_snapshot(source)
    job = submit(client, portals, "Big Mix", strategy=strategy, mode=mode,
                 target_portal_id=target)
    final = stack.wait_job(client, job["id"], FINAL, timeout=60)

    assert final["status"] == "FAILED", final
    assert "no space" in final["error_message"].lower(), final
    assert final["error_type"] == "NoSpaceError", final
    assert final["attempts"] == 1, "a full disk is not worth retrying"
    assert event_types(stack.events(client, job["id"]))[-1] == "error"
    assert tree_snapshot(source) == before, "the source must be intact"
    assert temp_files(stack.env) == [], "temp zips left behind"
    assert not [p for p in tiny_disk.rglob("*.zip")], "temp zip left on the full disk"
    dest = dest_root / "Big Mix"
    assert _half_written(source, dest) == [], "a file under its real name is incomplete"
    # Partial output removed: the final name never appeared, the staging dir is gone.
    leftovers = sorted(p.name for p in dest_root.iterdir())
    assert leftovers == [], leftovers
