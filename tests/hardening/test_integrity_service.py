"""Proof of a good copy through the service (issue 14): real uvicorn, arq worker,
Postgres, Redis and sshd. Exact moments come from the freezer (a test-only trigger
that holds the worker inside its own write of a phase event): no sleeps.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from mvp_core.transfer_engine.content import XXH128, hash_local_file
from tests.fixtures.stack import Stack
from tests.fixtures.trees import make_session_tree, tree_snapshot
from tests.hardening.conftest import FINAL, Freezer, event_types, submit
from tests.service.conftest import Portals

VICTIM = Path("Audio Files") / "Kick_0002.wav"


def _flip_keeping_size_and_mtime(path: Path) -> None:
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    data[:16] = bytes(b ^ 0xFF for b in data[:16])
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("strategy", ["direct", "zip_first"])
def test_move_of_a_source_rewritten_in_place_fails_and_deletes_nothing(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals, freezer: Freezer,
        strategy: str) -> None:
    """A header rewritten in place (same size, mtime put back) while the job runs."""
    stack, client = ketter_stack, api_client
    src = make_session_tree(portals.local_src_base, "Final Mix", n_audio=5)
    job = submit(client, portals, "Final Mix", strategy=strategy, mode="move")
    freezer.at_phase_event(job["id"], "verify", "started")
    stack.start_worker()
    freezer.wait_frozen()
    _flip_keeping_size_and_mtime(src / VICTIM)
    after_write = tree_snapshot(src)
    freezer.release()

    final = stack.wait_job(client, job["id"], FINAL, timeout=60)
    assert final["status"] == "FAILED", final
    assert final["error_type"] == "VerificationError", final
    assert "content differs" in final["error_message"] and "Kick_0002.wav" in final["error_message"]
    assert tree_snapshot(src) == after_write  # nothing deleted
    assert not (portals.ssh_dst_base / "Final Mix").exists()
    assert client.get(f"/jobs/{job['id']}/manifest").status_code == 409


def test_move_keeps_files_written_after_verification_and_says_so(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals,
        freezer: Freezer) -> None:
    stack, client = ketter_stack, api_client
    src = make_session_tree(portals.local_src_base, "Late Mix", n_audio=5)
    reference = tree_snapshot(src)
    job = submit(client, portals, "Late Mix", strategy="direct", mode="move")
    freezer.at_phase_event(job["id"], "deliver", "done")
    stack.start_worker()
    freezer.wait_frozen()
    with open(src / VICTIM, "ab") as f:
        f.write(b"one more bar")
    (src / "Audio Files" / "Overdub.wav").write_bytes(b"RIFF overdub")
    freezer.release()

    final = stack.wait_job(client, job["id"], FINAL, timeout=60)
    assert final["status"] == "FAILED", final
    assert final["error_type"] == "SourceChangedError", final
    message = final["error_message"]
    assert "delivered to" in message and "Kick_0002.wav" in message and "Overdub.wav" in message
    assert tree_snapshot(portals.ssh_dst_base / "Late Mix") == reference
    left = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
    assert left == ["Audio Files/Kick_0002.wav", "Audio Files/Overdub.wav"]
    assert (src / VICTIM).read_bytes().endswith(b"one more bar")
    assert "done" not in event_types(stack.events(client, job["id"]))


@pytest.mark.parametrize("strategy", ["direct", "zip_first"])
def test_done_job_serves_its_manifest_as_json_and_csv(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals, strategy: str) -> None:
    stack, client = ketter_stack, api_client
    src = make_session_tree(portals.local_src_base, "Sessão Final", n_audio=7)
    job = submit(client, portals, "Sessão Final", strategy=strategy, mode="move",
                 write_mhl=True)
    assert job["verify"] == "checksum" and job["write_mhl"] is True
    stack.start_worker()
    final = stack.wait_job(client, job["id"], FINAL, timeout=60)
    assert final["status"] == "DONE", final
    assert final["manifest_algorithm"] == XXH128
    assert not src.exists()
    delivered = portals.ssh_dst_base / "Sessão Final"
    assert len(list((delivered / "ascmhl").glob("0001_*.mhl"))) == 1  # the receipt, inside
    on_disk = {str(p.relative_to(delivered)): p for p in delivered.rglob("*")
               if p.is_file() and "ascmhl" not in p.relative_to(delivered).parts}

    body = client.get(f"/jobs/{job['id']}/manifest").json()
    assert body["job_id"] == job["id"] and body["algorithm"] == XXH128
    assert {f["path"] for f in body["files"]} == set(on_disk)
    for f in body["files"]:
        assert f["size"] == on_disk[f["path"]].stat().st_size
        assert f["hash"] == hash_local_file(str(on_disk[f["path"]]), XXH128).digest

    response = client.get(f"/jobs/{job['id']}/manifest", params={"format": "csv"})
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == ["path", "size", "mtime_ns", XXH128]
    assert {r[0]: r[3] for r in rows[1:]} == {f["path"]: f["hash"] for f in body["files"]}


def test_verify_size_is_a_choice_per_job_and_a_bad_value_is_422(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals) -> None:
    client = api_client
    bad = client.post("/jobs", json={"source_portal_id": portals.local_src, "source_path": "x",
                                     "target_portal_id": portals.ssh_dst, "verify": "md5"})
    assert bad.status_code == 422 and "verify" in bad.text
    make_session_tree(portals.local_src_base, "Quick", n_audio=2)
    job = submit(client, portals, "Quick", verify="size")
    assert job["verify"] == "size"
    ketter_stack.start_worker()
    final = ketter_stack.wait_job(client, job["id"], FINAL, timeout=60)
    assert final["status"] == "DONE" and final["manifest_algorithm"] is None
    files = client.get(f"/jobs/{job['id']}/manifest").json()["files"]
    assert files and all(f["hash"] is None for f in files)


@pytest.mark.parametrize("strategy", ["direct", "zip_first"])
def test_a_cancel_racing_the_rename_ends_done_and_says_so(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals, freezer: Freezer,
        strategy: str) -> None:
    """Held as the rename starts, the user cancels: the tree goes in place, so the truth
    is DONE (the cancel came too late), never CANCELLED "source untouched"."""
    stack, client = ketter_stack, api_client
    src = make_session_tree(portals.local_src_base, "Race Mix", n_audio=4)
    reference = tree_snapshot(src)
    job = submit(client, portals, "Race Mix", strategy=strategy, mode="move")
    freezer.at_phase_event(job["id"], "deliver", "started")
    stack.start_worker()
    freezer.wait_frozen()
    assert client.post(f"/jobs/{job['id']}/cancel").status_code == 200
    freezer.release()

    final = stack.wait_job(client, job["id"], FINAL, timeout=60)
    assert final["status"] == "DONE", final
    assert final["bytes_copied"] > 0
    assert tree_snapshot(portals.ssh_dst_base / "Race Mix") == reference
    assert not src.exists()
    done = [e for e in stack.events(client, job["id"]) if e["event_type"] == "done"]
    assert any("cancel arrived after" in w for w in done[0]["payload"]["warnings"]), done


def test_move_with_a_byte_flipped_in_staging_fails_and_keeps_the_source(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals,
        freezer: Freezer) -> None:
    stack, client = ketter_stack, api_client
    src = make_session_tree(portals.local_src_base, "Flip Mix", n_audio=5)
    before = tree_snapshot(src)
    job = submit(client, portals, "Flip Mix", strategy="direct", mode="move")
    freezer.at_phase_event(job["id"], "verify", "started")
    stack.start_worker()
    freezer.wait_frozen()
    staged = [p for p in portals.ssh_dst_base.rglob("Kick_0002.wav")]
    assert len(staged) == 1 and ".ketter-" in str(staged[0])
    _flip_keeping_size_and_mtime(staged[0])
    freezer.release()
    final = stack.wait_job(client, job["id"], FINAL, timeout=60)
    assert final["status"] == "FAILED" and final["error_type"] == "VerificationError", final
    assert "content differs" in final["error_message"]
    assert tree_snapshot(src) == before
    assert not (portals.ssh_dst_base / "Flip Mix").exists()


def test_move_onto_the_same_folder_through_an_ssh_portal_is_refused(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals, sshd: Any) -> None:
    """An ssh portal to this very host whose base is the LAB portal's own folder."""
    stack, client = ketter_stack, api_client
    src = make_session_tree(portals.local_src_base, "Twin Mix", n_audio=3)
    before = tree_snapshot(src)
    twin = client.post("/portals", json={
        "name": "lab-over-ssh", "kind": "ssh", "host": sshd.host, "port": sshd.port,
        "username": sshd.user, "base_path": str(portals.local_src_base),
        "identity_file": str(sshd.identity_file), "known_hosts_file": str(sshd.known_hosts_file),
    })
    assert twin.status_code == 201, twin.text
    job = submit(client, portals, "Twin Mix", mode="move", on_existing="replace",
                 target_portal_id=twin.json()["id"])
    stack.start_worker()
    final = stack.wait_job(client, job["id"], FINAL, timeout=60)
    assert final["status"] == "FAILED" and final["attempts"] == 1, final
    assert "same storage" in final["error_message"], final
    assert tree_snapshot(src) == before


def test_move_of_a_source_the_worker_cannot_empty_is_refused_before_any_byte(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals) -> None:
    stack, client = ketter_stack, api_client
    src = make_session_tree(portals.local_src_base, "Locked Mix", n_audio=3)
    locked = src / "Fade Files"
    subprocess.run(["chattr", "+i", str(locked)], check=True)
    try:
        job = submit(client, portals, "Locked Mix", mode="move")
        stack.start_worker()
        final = stack.wait_job(client, job["id"], FINAL, timeout=60)
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)
    assert final["status"] == "FAILED" and final["error_type"] == "SourceNotDeletableError", final
    assert "Fade Files" in final["error_message"]
    phases = {e["payload"].get("phase") for e in stack.events(client, job["id"])}
    assert "send" not in phases and "zip" not in phases
    assert list(portals.ssh_dst_base.iterdir()) == []


def test_merge_move_over_a_stale_same_size_file_delivers_the_source_bytes(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals) -> None:
    stack, client = ketter_stack, api_client
    src = make_session_tree(portals.local_src_base, "Merge Mix", n_audio=3)
    reference = tree_snapshot(src)
    stale = portals.ssh_dst_base / "Merge Mix" / VICTIM
    stale.parent.mkdir(parents=True)
    stale.write_bytes(bytes(b ^ 0x55 for b in (src / VICTIM).read_bytes()))
    st = os.stat(src / VICTIM)
    os.utime(stale, ns=(st.st_atime_ns, st.st_mtime_ns))
    job = submit(client, portals, "Merge Mix", mode="move", on_existing="merge",
                 strategy="direct")
    stack.start_worker()
    final = stack.wait_job(client, job["id"], FINAL, timeout=60)
    assert final["status"] == "DONE", final
    assert tree_snapshot(portals.ssh_dst_base / "Merge Mix") == reference
    assert not src.exists()
