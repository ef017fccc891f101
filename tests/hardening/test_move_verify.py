"""A move whose verification fails: a destination file truncated just as ``verify``
starts. The source is untouched, nothing is deleted, the transfer/job FAILS."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from mvp_core.transfer_engine.endpoints import LocalEndpoint
from mvp_core.transfer_engine.errors import VerificationError
from mvp_core.transfer_engine.execute import execute_plan
from mvp_core.transfer_engine.job import TransferJob, TransferMode
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.planner import TransferStrategy, decide_strategy
from mvp_core.transfer_engine.results import PhaseEvent
from tests.fixtures.sshd import SshServer
from tests.fixtures.stack import Stack
from tests.fixtures.trees import make_session_tree, tree_snapshot
from tests.hardening.conftest import FINAL, Freezer, event_types, submit, temp_files
from tests.service.conftest import Portals

VICTIM = Path("Audio Files") / "Kick_0002.wav"


def _staged(target: Path) -> Path:
    """The victim file wherever the engine verifies it (its staging dir under the target,
    or the final place)."""
    found = [p for p in target.rglob(VICTIM.name) if p.parent.name == VICTIM.parent.name]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("strategy", list(TransferStrategy), ids=lambda s: s.value)
@pytest.mark.parametrize("where", ["local", "ssh"])
def test_engine_move_verify_fails_source_untouched(
        tmp_path: Path, sshd: SshServer, strategy: TransferStrategy, where: str) -> None:
    options = EngineOptions(temp_dir=tmp_path / "ltmp", remote_temp_dir=str(tmp_path / "rtmp"),
                            ssh_connect_timeout_s=5)
    src = make_session_tree(tmp_path / "src", n_audio=5)
    before = tree_snapshot(src)
    dest = tmp_path / "dest"
    target = sshd.endpoint(dest) if where == "ssh" else LocalEndpoint(dest)
    phases: list[tuple[str, str]] = []

    def on_phase(event: PhaseEvent) -> None:
        phases.append((event.phase, event.status))
        if (event.phase, event.status) == ("verify", "started"):
            _staged(dest).write_bytes(b"truncated")

    job = TransferJob(LocalEndpoint(src), target, TransferMode.MOVE, job_id="verify-fails")
    with pytest.raises(VerificationError, match="Kick_0002.wav"):
        execute_plan(decide_strategy(job, force=strategy), options=options, on_phase=on_phase)
    assert tree_snapshot(src) == before
    assert ("delete_source", "started") not in phases
    assert ("verify", "failed") in phases
    for d in (tmp_path / "ltmp", tmp_path / "rtmp"):
        assert not d.exists() or list(d.iterdir()) == []


@pytest.mark.parametrize("strategy", ["direct", "zip_first"])
def test_service_move_verify_fails_job_failed_source_untouched(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals, freezer: Freezer,
        strategy: str) -> None:
    """Through the worker: held at ``verify`` started, the file truncated, then let go."""
    stack, client = ketter_stack, api_client
    src = make_session_tree(portals.local_src_base, "Moved Mix", n_audio=5)
    before = tree_snapshot(src)
    job = submit(client, portals, "Moved Mix", strategy=strategy, mode="move")
    freezer.at_phase_event(job["id"], "verify", "started")
    stack.start_worker()
    freezer.wait_frozen()
    _staged(portals.ssh_dst_base).write_bytes(b"truncated")
    freezer.release()  # the held event write fails (logged); the engine goes on to verify

    final = stack.wait_job(client, job["id"], FINAL, timeout=60)
    assert final["status"] == "FAILED", final
    assert final["error_type"] == "VerificationError", final
    assert "Kick_0002.wav" in final["error_message"], final
    assert final["attempts"] == 1, "a failed verification is not retried blindly"
    assert tree_snapshot(src) == before, "the source of a failed move must be untouched"
    types = event_types(stack.events(client, job["id"]))
    assert types[-1] == "error" and "done" not in types
    assert temp_files(stack.env) == []
