"""Proof of a good copy through the service (issue 14): real uvicorn, arq worker,
Postgres, Redis and sshd. Exact moments come from the freezer (a test-only trigger
that holds the worker inside its own write of a phase event): no sleeps.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

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
    job = submit(client, portals, "Sessão Final", strategy=strategy, mode="move")
    assert job["verify"] == "checksum"
    stack.start_worker()
    final = stack.wait_job(client, job["id"], FINAL, timeout=60)
    assert final["status"] == "DONE", final
    assert final["manifest_algorithm"] == XXH128
    assert not src.exists()
    delivered = portals.ssh_dst_base / "Sessão Final"
    on_disk = {str(p.relative_to(delivered)): p for p in delivered.rglob("*") if p.is_file()}

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
