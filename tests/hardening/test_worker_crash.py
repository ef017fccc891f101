"""kill -9 of the worker in every phase: a new worker finishes, the tree is identical,
no temp zip is left on either side, and a move never loses a file.

rsync phases (DIRECT send, ZIP_FIRST send) are slowed with the bandwidth limit; the
phases that do not go through rsync (zip, unzip, verify) are caught with the
``freezer`` (the worker hangs inside its own DB write at that point). The service
suite already kills a ZIP_FIRST copy during send (tests/service/test_e2e.py); here
every other phase, and moves.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.fixtures.stack import Stack, wait_until
from tests.fixtures.trees import assert_trees_identical, make_session_tree
from tests.hardening.conftest import FINAL, Freezer, event_types, submit, temp_files
from tests.service.conftest import Portals
from tests.service.test_e2e import SLOW_KIB_S, _big_tree, _wait_progress


def _reference_copy(source: Path, where: Path) -> Path:
    """A byte-, mode- and mtime-exact copy to compare against after a move."""
    where.mkdir(parents=True)
    subprocess.run(["cp", "-a", "--", str(source), str(where)], check=True, timeout=60)
    return where / source.name


def _zips(stack: Stack) -> list[Path]:
    return [p for p in temp_files(stack.env) if p.name.endswith(".zip")]


# Each case: strategy, mode, how to reach the phase, what must be true at the kill.
Strike = Callable[[Stack, httpx.Client, Freezer, int], None]


def _slow_send(phase: str) -> Strike:
    def strike(stack: Stack, client: httpx.Client, freezer: Freezer, job_id: int) -> None:
        stack.start_worker(rsync_bwlimit_kib_s=SLOW_KIB_S)
        _wait_progress(stack, client, job_id, phase)
    return strike


def _frozen_progress(phase: str) -> Strike:
    def strike(stack: Stack, client: httpx.Client, freezer: Freezer, job_id: int) -> None:
        freezer.at_progress_in(job_id, phase)
        stack.start_worker()
        freezer.wait_frozen()
    return strike


def _frozen_event(phase: str, status: str) -> Strike:
    def strike(stack: Stack, client: httpx.Client, freezer: Freezer, job_id: int) -> None:
        freezer.at_phase_event(job_id, phase, status)
        stack.start_worker()
        freezer.wait_frozen()
    return strike


CASES = {
    # id: (strategy, mode, strike, zip expected to exist at the kill)
    "direct-send-move": ("direct", "move", _slow_send("send"), False),
    "zip-building-move": ("zip_first", "move", _frozen_progress("zip"), True),
    "zip_first-send-move": ("zip_first", "move", _slow_send("send"), True),
    "unzip-started-copy": ("zip_first", "copy", _frozen_event("unzip", "started"), True),
    # The chunk's zip is removed by its unzip step (with its marker written): none left.
    "unzip-finished-move": ("zip_first", "move", _frozen_event("unzip", "done"), False),
    "verify-move": ("direct", "move", _frozen_event("verify", "started"), False),
    "deliver-move": ("zip_first", "move", _frozen_event("deliver", "started"), False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_kill9_in_every_phase_new_worker_finishes(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals, freezer: Freezer,
        tmp_path: Path, case: str) -> None:
    strategy, mode, strike, zip_at_kill = CASES[case]
    stack, client = ketter_stack, api_client
    slow = strike.__qualname__.startswith("_slow_send")
    if slow:  # bytes to push through the bandwidth limit: ~4 s
        source = _big_tree(portals.local_src_base, "Crash Mix", n_files=4, size=1024 * 1024)
    else:
        source = make_session_tree(portals.local_src_base, "Crash Mix", n_audio=8,
                                   audio_size=256 * 1024)
    reference = _reference_copy(source, tmp_path / "reference")
    job = submit(client, portals, "Crash Mix", strategy=strategy, mode=mode)

    strike(stack, client, freezer, job["id"])
    running = client.get(f"/jobs/{job['id']}").json()
    assert running["status"] == "RUNNING", running
    assert bool(_zips(stack)) is zip_at_kill, _zips(stack)
    stack.processes[-1].kill9()
    freezer.release()
    assert client.get(f"/jobs/{job['id']}").json()["status"] == "RUNNING"  # the truth so far

    stack.start_worker()
    final = stack.wait_job(client, job["id"], FINAL, timeout=60)
    assert final["status"] == "DONE", final
    assert final["attempts"] == 2, final
    assert_trees_identical(reference, portals.ssh_dst_base / "Crash Mix")
    if mode == "move":
        assert not source.exists(), "a finished move removes the source"
    else:
        assert_trees_identical(reference, source)
    assert temp_files(stack.env) == [], "temp zips (or their rsync temps) left behind"
    wait_until(lambda: [p.name for p in portals.ssh_dst_base.iterdir()] == ["Crash Mix"],
               timeout=10, what="no staging left")
    types = event_types(stack.events(client, job["id"]))
    assert "recovered" in types and types.count("started") == 2 and types[-1] == "done", types


@pytest.mark.parametrize("mode, phase", [("copy", "deliver"), ("move", "delete_source")])
def test_kill9_after_delivery_before_done_is_truthful(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals, freezer: Freezer,
        tmp_path: Path, mode: str, phase: str) -> None:
    """The worst moments: the tree is delivered under its final name (and, for a move,
    the source deleted) but DONE is not recorded yet.

    The new attempt must not touch the delivered copy, leave no staging dir, and end
    DONE: the job's own history proves the copy was verified before the rename (and
    before the source was deleted). For the move, the marker, the final tree and the
    missing source tell the worker the previous attempt finished (b93a375): DONE, not
    FAILED "source does not exist".
    """
    stack, client = ketter_stack, api_client
    source = make_session_tree(portals.local_src_base, "Last Mix", n_audio=6)
    reference = _reference_copy(source, tmp_path / "reference")
    job = submit(client, portals, "Last Mix", strategy="direct", mode=mode)
    freezer.at_phase_event(job["id"], phase, "done")
    stack.start_worker()
    freezer.wait_frozen()
    stack.processes[-1].kill9()
    freezer.release()
    assert source.exists() is (mode == "copy")

    stack.start_worker()
    final = stack.wait_job(client, job["id"], FINAL, timeout=60)
    assert_trees_identical(reference, portals.ssh_dst_base / "Last Mix")
    if mode == "copy":
        assert_trees_identical(reference, source)
    wait_until(lambda: [p.name for p in portals.ssh_dst_base.iterdir()] == ["Last Mix"],
               timeout=10, what="no staging left")
    wait_until(lambda: temp_files(stack.env) == [], timeout=5, what="no temp files")
    assert final["status"] == "DONE", final
