"""Both strategies, copy and move, local→local and local→ssh, against real binaries."""

from __future__ import annotations

from pathlib import Path

import pytest

from mvp_core.transfer_engine.direct import run_transfer
from mvp_core.transfer_engine.endpoints import Endpoint, LocalEndpoint
from mvp_core.transfer_engine.execute import execute_plan
from mvp_core.transfer_engine.zip_first import zip_name
from mvp_core.transfer_engine.job import TransferJob, TransferMode
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.planner import TransferStrategy, decide_strategy
from mvp_core.transfer_engine.results import PhaseEvent, Progress
from tests.engine.conftest import temp_leftovers
from tests.fixtures.sshd import SshServer
from tests.fixtures.trees import assert_trees_identical, make_session_tree, tree_snapshot

STRATEGIES = [TransferStrategy.DIRECT, TransferStrategy.ZIP_FIRST]
EXPECTED_PHASES = {
    (TransferStrategy.DIRECT, False): ["send", "verify", "deliver"],
    (TransferStrategy.DIRECT, True): ["send", "verify", "deliver"],
    (TransferStrategy.ZIP_FIRST, False): ["zip", "unzip", "cleanup", "verify", "deliver"],
    (TransferStrategy.ZIP_FIRST, True): ["zip", "send", "unzip", "cleanup", "verify", "deliver"],
}


def _target(where: str, path: Path, sshd: SshServer) -> Endpoint:
    return sshd.endpoint(path) if where == "ssh" else LocalEndpoint(path)


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
@pytest.mark.parametrize("where", ["local", "ssh"])
@pytest.mark.parametrize("mode", [TransferMode.COPY, TransferMode.MOVE], ids=lambda m: m.value)
def test_transfer(tmp_path: Path, sshd: SshServer, engine_options: EngineOptions,
                  strategy: TransferStrategy, where: str, mode: TransferMode) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=30)
    reference = tree_snapshot(src)
    dest_dir = tmp_path / "target dir" / "new level"  # created on demand
    job = TransferJob(LocalEndpoint(src), _target(where, dest_dir, sshd), mode, job_id="t1")
    plan = decide_strategy(job, force=strategy)
    assert plan.strategy is strategy

    events: list[PhaseEvent] = []
    progress: list[Progress] = []
    result = execute_plan(plan, options=engine_options, on_phase=events.append,
                          progress=progress.append)

    landed = dest_dir / src.name
    assert tree_snapshot(landed) == reference
    assert result.strategy is strategy
    assert result.files_transferred == plan.n_files == 36
    assert result.bytes_transferred == plan.total_bytes
    assert result.duration_s > 0
    phases = EXPECTED_PHASES[(strategy, where == "ssh")] + (
        ["flush", "delete_source"] if mode is TransferMode.MOVE else [])
    assert [e.phase for e in events if e.status == "done"] == phases
    assert [e.phase for e in events if e.status == "started"] == phases
    assert all(e.duration_s is not None and e.duration_s >= 0 for e in events
               if e.status == "done")
    assert list(result.phase_timings) == phases
    # Progress reached the total of the phase that moves the bytes.
    moving = "zip" if strategy is TransferStrategy.ZIP_FIRST else "send"
    last = [p for p in progress if p.phase == moving][-1]
    assert last.bytes_done == last.bytes_total == plan.total_bytes
    assert temp_leftovers(engine_options) == []
    if mode is TransferMode.MOVE:
        assert not src.exists()
    else:
        assert tree_snapshot(src) == reference


def test_ssh_to_local_copy_and_move(tmp_path: Path, sshd: SshServer,
                                    engine_options: EngineOptions) -> None:
    src = make_session_tree(tmp_path / "remote side", n_audio=5)
    reference = tree_snapshot(src)
    job = TransferJob(sshd.endpoint(src), LocalEndpoint(tmp_path / "here"), TransferMode.COPY)
    plan = decide_strategy(job)
    assert plan.strategy is TransferStrategy.DIRECT and "remote" in plan.reason
    progress: list[Progress] = []
    result = execute_plan(plan, options=engine_options, progress=progress.append)
    assert tree_snapshot(tmp_path / "here" / src.name) == reference
    assert result.files_transferred == 11
    assert progress[-1].bytes_done == progress[-1].bytes_total == result.bytes_transferred

    move = TransferJob(sshd.endpoint(src), LocalEndpoint(tmp_path / "moved"), TransferMode.MOVE)
    run_transfer(move, options=engine_options)
    assert tree_snapshot(tmp_path / "moved" / src.name) == reference
    assert not src.exists()


@pytest.mark.parametrize("where", ["local", "ssh"])
def test_single_file_lands_as_target_basename(tmp_path: Path, sshd: SshServer,
                                              engine_options: EngineOptions, where: str) -> None:
    mix = tmp_path / "Final Mix v2 $5.wav"
    mix.write_bytes(b"RIFF" + bytes(5000))
    job = TransferJob(LocalEndpoint(mix), _target(where, tmp_path / "out", sshd),
                      TransferMode.MOVE)
    plan = decide_strategy(job, force=TransferStrategy.ZIP_FIRST)
    assert plan.strategy is TransferStrategy.DIRECT
    result = execute_plan(plan, options=engine_options)
    assert (tmp_path / "out" / mix.name).read_bytes() == b"RIFF" + bytes(5000)
    assert result.files_transferred == 1 and result.bytes_transferred == 5004
    assert not mix.exists()


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
def test_retry_over_a_partial_destination_completes(tmp_path: Path, sshd: SshServer,
                                                     engine_options: EngineOptions,
                                                     strategy: TransferStrategy) -> None:
    """A second attempt of the same job overwrites what the first left half-done
    (in its staging directory: never under the final name)."""
    src = make_session_tree(tmp_path / "src", n_audio=8)
    landed = tmp_path / "out" / ".ketter-retry" / src.name / "Audio Files"
    landed.mkdir(parents=True)
    (landed / "Kick_0000.wav").write_bytes(b"truncated")
    job = TransferJob(LocalEndpoint(src), sshd.endpoint(tmp_path / "out"), job_id="retry")
    # A stale temp zip from a crashed attempt is replaced, then removed.
    stale = Path(engine_options.remote_temp_dir)
    stale.mkdir(parents=True)
    (stale / zip_name("retry", remote=True)).write_bytes(b"garbage")
    execute_plan(decide_strategy(job, force=strategy), options=engine_options)
    # unzip restores directories it creates only; the engine restores the others.
    assert_trees_identical(src, tmp_path / "out" / src.name)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [src.name]
    if strategy is TransferStrategy.ZIP_FIRST:
        assert temp_leftovers(engine_options) == []


@pytest.mark.parametrize("where", ["local", "ssh"])
def test_symlinks_go_direct_and_stay_symlinks(tmp_path: Path, sshd: SshServer,
                                              engine_options: EngineOptions, where: str) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=3)
    (src / "latest.ptx").symlink_to("Test Session.ptx")
    plan = decide_strategy(TransferJob(LocalEndpoint(src), _target(where, tmp_path / "t", sshd),
                                       TransferMode.MOVE), force=TransferStrategy.ZIP_FIRST)
    assert plan.strategy is TransferStrategy.DIRECT and "symlink" in plan.reason
    reference = tree_snapshot(src)
    execute_plan(plan, options=engine_options)
    landed = tmp_path / "t" / src.name
    assert tree_snapshot(landed) == reference
    assert (landed / "latest.ptx").is_symlink()
    assert not src.exists()


def test_read_only_folders_are_moved_too(tmp_path: Path, engine_options: EngineOptions) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=3)
    (src / "Audio Files").chmod(0o555)
    (src / "Fade Files").chmod(0o500)
    reference = tree_snapshot(src)
    run_transfer(TransferJob(LocalEndpoint(src), LocalEndpoint(tmp_path / "t"), TransferMode.MOVE),
                 options=engine_options)
    assert tree_snapshot(tmp_path / "t" / src.name) == reference
    assert not src.exists()
