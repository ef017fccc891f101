"""What goes wrong, against real binaries: typed errors, nothing lost, nothing left behind."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path, PurePosixPath

import pytest

from mvp_core.transfer_engine.direct import run_transfer, stream_list_path
from mvp_core.transfer_engine.endpoints import LocalEndpoint, SshEndpoint
from mvp_core.transfer_engine.errors import (
    InvalidEndpointError,
    NoSpaceError,
    RemoteCommandMissingError,
    SourceMissingError,
    SshAuthError,
    TargetNotWritableError,
    TransferCancelledError,
    VerificationError,
)
from mvp_core.transfer_engine.execute import cleanup_job_temp, execute_plan
from mvp_core.transfer_engine.job import TransferJob, TransferMode
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.planner import TransferStrategy, decide_strategy
from mvp_core.transfer_engine.results import CancelToken, PhaseEvent, Progress
from mvp_core.transfer_engine.zip_first import run_transfer_zip_first, zip_name
from tests.engine.conftest import temp_leftovers
from tests.fixtures.sshd import SshServer
from tests.fixtures.trees import assert_trees_identical, make_session_tree, tree_snapshot

DIRECT, ZIP = TransferStrategy.DIRECT, TransferStrategy.ZIP_FIRST
STRATEGIES = [DIRECT, ZIP]


def _slow(options: EngineOptions) -> EngineOptions:
    return dataclasses.replace(options, bwlimit_kib_s=64)


@pytest.mark.parametrize("where", ["local", "ssh"])
def test_missing_local_source(tmp_path: Path, sshd: SshServer, engine_options: EngineOptions,
                              where: str) -> None:
    target = sshd.endpoint(tmp_path / "t") if where == "ssh" else LocalEndpoint(tmp_path / "t")
    job = TransferJob(LocalEndpoint(tmp_path / "no such session"), target)
    with pytest.raises(SourceMissingError, match="no such session"):
        run_transfer(job, options=engine_options)
    with pytest.raises(SourceMissingError):
        decide_strategy(job)
    assert not (tmp_path / "t").exists()


def test_missing_remote_source(tmp_path: Path, sshd: SshServer,
                               engine_options: EngineOptions) -> None:
    job = TransferJob(sshd.endpoint(tmp_path / "gone"), LocalEndpoint(tmp_path / "t"))
    with pytest.raises(SourceMissingError, match="gone"):
        execute_plan(decide_strategy(job), options=engine_options)


def test_source_vanishing_after_planning(tmp_path: Path, engine_options: EngineOptions) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=3)
    plan = decide_strategy(TransferJob(LocalEndpoint(src), LocalEndpoint(tmp_path / "t")),
                           force=ZIP)
    shutil.rmtree(src)
    with pytest.raises(SourceMissingError):
        execute_plan(plan, options=engine_options)
    assert temp_leftovers(engine_options) == []


def test_both_remote_is_refused(sshd: SshServer, tmp_path: Path) -> None:
    with pytest.raises(InvalidEndpointError, match="both remote"):
        run_transfer(TransferJob(sshd.endpoint(tmp_path), sshd.endpoint(tmp_path / "x")))


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
@pytest.mark.parametrize("where", ["local", "ssh"])
def test_target_not_writable(tmp_path: Path, sshd: SshServer, engine_options: EngineOptions,
                             strategy: TransferStrategy, where: str) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=2)
    blocker = tmp_path / "a file"
    blocker.write_text("not a directory")
    target = (sshd.endpoint(blocker / "sub") if where == "ssh"
              else LocalEndpoint(blocker / "sub"))
    plan = decide_strategy(TransferJob(LocalEndpoint(src), target), force=strategy)
    with pytest.raises(TargetNotWritableError):
        execute_plan(plan, options=engine_options)
    assert temp_leftovers(engine_options) == []


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
def test_wrong_host_key_refuses_the_transfer(tmp_path: Path, sshd: SshServer,
                                             wrong_known_hosts: Path,
                                             engine_options: EngineOptions,
                                             strategy: TransferStrategy) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=2)
    target = sshd.endpoint(tmp_path / "t", known_hosts_file=wrong_known_hosts)
    plan = decide_strategy(TransferJob(LocalEndpoint(src), target, TransferMode.MOVE),
                           force=strategy)
    with pytest.raises(SshAuthError, match="host key") as info:
        execute_plan(plan, options=engine_options)
    assert not info.value.transient
    assert not (tmp_path / "t").exists()
    assert src.exists()
    assert temp_leftovers(engine_options) == []


def test_remote_without_unzip(tmp_path: Path, sshd_without_unzip: SshServer,
                              engine_options: EngineOptions) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=4)
    reference = tree_snapshot(src)
    job = TransferJob(LocalEndpoint(src), sshd_without_unzip.endpoint(tmp_path / "t"),
                      TransferMode.MOVE, job_id="nounzip")
    phases: list[PhaseEvent] = []
    with pytest.raises(RemoteCommandMissingError, match="unzip is not installed") as info:
        execute_plan(decide_strategy(job, force=ZIP), options=engine_options,
                     on_phase=phases.append)
    # Found by the host's capability probe, before any byte moved: nothing zipped or sent.
    assert "DIRECT" in str(info.value)
    assert not {"zip", "send", "unzip"} & {e.phase for e in phases}
    assert not (tmp_path / "t").exists()
    assert temp_leftovers(engine_options) == []
    assert tree_snapshot(src) == reference
    # The same host still takes a DIRECT transfer (it has rsync).
    execute_plan(decide_strategy(job, force=DIRECT), options=engine_options)
    assert tree_snapshot(tmp_path / "t" / src.name) == reference
    assert not src.exists()


def _cancel_when(phase: str, cancel: CancelToken):  # type: ignore[no-untyped-def]
    def progress(p: Progress) -> None:
        if p.phase == phase and 0 < p.bytes_done < p.bytes_total:
            cancel.cancel()
    return progress


@pytest.mark.parametrize("phase", ["zip", "send"])
def test_cancelled_zip_first_leaves_no_temp_zip(tmp_path: Path, sshd: SshServer,
                                                engine_options: EngineOptions,
                                                phase: str) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=40, audio_size=32 * 1024)
    reference = tree_snapshot(src)
    job = TransferJob(LocalEndpoint(src), sshd.endpoint(tmp_path / "t"), TransferMode.MOVE,
                      job_id="cancel-me")
    cancel = CancelToken()
    events: list[PhaseEvent] = []
    with pytest.raises(TransferCancelledError):
        execute_plan(decide_strategy(job, force=ZIP), options=_slow(engine_options),
                     cancel=cancel, progress=_cancel_when(phase, cancel),
                     on_phase=events.append)
    assert (phase, "failed") in [(e.phase, e.status) for e in events]
    assert temp_leftovers(engine_options) == []
    assert tree_snapshot(src) == reference  # a cancelled move deletes nothing


def test_cancelled_direct_then_retry_completes(tmp_path: Path, sshd: SshServer,
                                              engine_options: EngineOptions) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=20, audio_size=32 * 1024)
    job = TransferJob(LocalEndpoint(src), sshd.endpoint(tmp_path / "t"), TransferMode.MOVE)
    cancel = CancelToken()
    with pytest.raises(TransferCancelledError):
        run_transfer(job, options=_slow(engine_options), cancel=cancel,
                     progress=_cancel_when("send", cancel))
    assert src.exists()
    reference = tree_snapshot(src)
    run_transfer(TransferJob(LocalEndpoint(src), sshd.endpoint(tmp_path / "t")),
                 options=engine_options)
    assert tree_snapshot(tmp_path / "t" / src.name) == reference  # no partial dir left


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
@pytest.mark.parametrize("where", ["local", "ssh"])
def test_move_with_damaged_destination_keeps_the_source(
        tmp_path: Path, sshd: SshServer, engine_options: EngineOptions,
        strategy: TransferStrategy, where: str) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=6)
    reference = tree_snapshot(src)
    target = sshd.endpoint(tmp_path / "t") if where == "ssh" else LocalEndpoint(tmp_path / "t")
    # Written into the staging dir, verified there before it gets its final name.
    landed = tmp_path / "t" / ".ketter-adhoc" / src.name / "Audio Files" / "Kick_0003.wav"
    last_write = "send" if strategy is DIRECT else "unzip"

    def damage(event: PhaseEvent) -> None:  # someone truncates a file at the target
        if event.phase == last_write and event.status == "done":
            landed.write_bytes(b"short")

    job = TransferJob(LocalEndpoint(src), target, TransferMode.MOVE)
    events: list[PhaseEvent] = []

    def on_phase(e: PhaseEvent) -> None:
        events.append(e)
        damage(e)

    with pytest.raises(VerificationError, match="Kick_0003.wav") as info:
        execute_plan(decide_strategy(job, force=strategy), options=engine_options,
                     on_phase=on_phase)
    assert "size differs" in str(info.value)
    assert tree_snapshot(src) == reference
    assert "delete_source" not in [e.phase for e in events]
    assert list((tmp_path / "t").iterdir()) == []  # not delivered, staging removed


def test_move_refuses_when_the_source_grew_during_transfer(tmp_path: Path,
                                                          engine_options: EngineOptions) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=6)
    late = src / "Audio Files" / "recorded after planning.wav"

    def add_file(event: PhaseEvent) -> None:
        if event.phase == "unzip" and event.status == "done":
            late.write_bytes(b"new take")

    job = TransferJob(LocalEndpoint(src), LocalEndpoint(tmp_path / "t"), TransferMode.MOVE)
    with pytest.raises(VerificationError, match="recorded after planning"):
        run_transfer_zip_first(decide_strategy(job, force=ZIP), options=engine_options,
                               on_phase=add_file)
    assert late.read_bytes() == b"new take"
    assert (src / "Test Session.ptx").exists()


def test_disk_full_on_the_receiving_side(tmp_path: Path, sshd: SshServer, tiny_fs: Path,
                                         engine_options: EngineOptions) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=12, audio_size=256 * 1024)
    job = TransferJob(LocalEndpoint(src), sshd.endpoint(tiny_fs / "t"))
    with pytest.raises(NoSpaceError) as info:
        run_transfer(job, options=engine_options)
    # Either rsync's own message came through, or the df post-mortem said it.
    assert ("No space left on device" in info.value.stderr_tail
            or "bytes free" in info.value.message)
    assert not info.value.transient
    local = TransferJob(LocalEndpoint(src), LocalEndpoint(tiny_fs / "local"))
    with pytest.raises(NoSpaceError):
        run_transfer(local, options=engine_options)


def test_disk_full_in_the_temp_dir(tmp_path: Path, tiny_fs: Path,
                                   engine_options: EngineOptions) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=12, audio_size=256 * 1024)
    options = dataclasses.replace(engine_options, temp_dir=tiny_fs / "tmp")
    job = TransferJob(LocalEndpoint(src), LocalEndpoint(tmp_path / "t"))
    with pytest.raises(NoSpaceError, match="temp dir"):
        execute_plan(decide_strategy(job, force=ZIP), options=options)
    assert list((tiny_fs / "tmp").iterdir()) == []


def test_cleanup_job_temp_removes_both_sides(tmp_path: Path, sshd: SshServer,
                                             engine_options: EngineOptions) -> None:
    """What the worker calls after a crash left temp zips behind."""
    job = TransferJob(LocalEndpoint(tmp_path / "s"), sshd.endpoint(tmp_path / "t"),
                      job_id="job 42/../x")
    name = zip_name(job.job_id)
    assert "/" not in name and " " not in name
    local, remote = Path(engine_options.temp_dir), Path(engine_options.remote_temp_dir)
    for d, side in ((local, False), (remote, True)):
        d.mkdir(parents=True)
        (d / zip_name(job.job_id, remote=side)).write_bytes(b"zip")
    (remote / f".{zip_name(job.job_id, remote=True)}.Ab12Cd").write_bytes(b"rsync temp")
    (remote / "ketter-other-job.zip").write_bytes(b"not ours")
    for i in range(2):  # DIRECT's stream lists, left by a killed worker
        stream_list_path(job, engine_options, i).write_bytes(b"Audio Files/a.wav\0")
    other = TransferJob(job.source, job.target, job_id=f"{job.job_id}.stream1")
    stream_list_path(other, engine_options, 0).write_bytes(b"not ours\0")
    cleanup_job_temp(job, engine_options)
    cleanup_job_temp(job, engine_options)  # idempotent
    assert sorted(p.name for p in remote.iterdir()) == ["ketter-other-job.zip"]
    assert list(local.iterdir()) == [stream_list_path(other, engine_options, 0)]


def test_unreachable_remote_cleanup_is_typed(tmp_path: Path, engine_options: EngineOptions
                                             ) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = SshEndpoint(host="127.0.0.1", port=port, path=PurePosixPath(str(tmp_path)))
    from mvp_core.transfer_engine.errors import SshConnectionError

    with pytest.raises(SshConnectionError):
        cleanup_job_temp(TransferJob(LocalEndpoint(tmp_path), target), engine_options)


def test_hostile_tree_survives_a_retry_after_cancel(tmp_path: Path, hostile_tree: Path,
                                                    sshd: SshServer,
                                                    engine_options: EngineOptions) -> None:
    job = TransferJob(LocalEndpoint(hostile_tree), sshd.endpoint(tmp_path / "t"))
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(TransferCancelledError):
        execute_plan(decide_strategy(job, force=ZIP), options=engine_options, cancel=cancel)
    execute_plan(decide_strategy(job, force=ZIP), options=engine_options)
    assert_trees_identical(hostile_tree, tmp_path / "t" / hostile_tree.name)


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
def test_overlapping_source_and_target_are_refused(tmp_path: Path, engine_options: EngineOptions,
                                                   strategy: TransferStrategy) -> None:
    """Moving a folder into its own parent or into itself must never delete it."""
    src = make_session_tree(tmp_path / "src", n_audio=2)
    reference = tree_snapshot(src)
    for target, why in ((src.parent, "is the source itself"),
                        (src / "Audio Files", "inside the source"),
                        (src, "inside the source")):
        job = TransferJob(LocalEndpoint(src), LocalEndpoint(target), TransferMode.MOVE)
        with pytest.raises(InvalidEndpointError, match=why):
            execute_plan(decide_strategy(job, force=strategy), options=engine_options)
    assert tree_snapshot(src) == reference
    assert temp_leftovers(engine_options) == []


@pytest.mark.parametrize("missing", ["identity_file", "known_hosts_file"])
def test_missing_key_or_known_hosts_file_is_said_plainly(tmp_path: Path, sshd: SshServer,
                                                         engine_options: EngineOptions,
                                                         missing: str) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=1)
    target = sshd.endpoint(tmp_path / "t", **{missing: tmp_path / "nope"})
    label = "identity file" if missing == "identity_file" else "known_hosts file"
    with pytest.raises(SshAuthError, match=f"{label} not found"):
        run_transfer(TransferJob(LocalEndpoint(src), target), options=engine_options)
    assert not (tmp_path / "t").exists()


def test_disk_full_in_the_remote_temp_dir(tmp_path: Path, sshd: SshServer, tiny_fs: Path,
                                          engine_options: EngineOptions) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=12, audio_size=256 * 1024)
    options = dataclasses.replace(engine_options, remote_temp_dir=str(tiny_fs / "rtmp"))
    job = TransferJob(LocalEndpoint(src), sshd.endpoint(tmp_path / "t"), job_id="full")
    with pytest.raises(NoSpaceError):
        execute_plan(decide_strategy(job, force=ZIP), options=options)
    assert list((tiny_fs / "rtmp").iterdir()) == []
    assert temp_leftovers(engine_options) == []


def _incomplete(src: Path, dest: Path) -> list[str]:
    """Files under their real name at ``dest`` whose bytes differ from ``src``."""
    bad = []
    for path in dest.rglob("*"):
        rel = path.relative_to(dest)
        if (path.is_file() and ".ketter-partial" not in rel.parts
                and (src / rel).read_bytes() != path.read_bytes()):
            bad.append(str(rel))
    return bad


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
@pytest.mark.parametrize("where", ["local", "ssh"])
def test_full_target_leaves_nothing_half_written(tmp_path: Path, sshd: SshServer, tiny_fs: Path,
                                                engine_options: EngineOptions,
                                                strategy: TransferStrategy, where: str) -> None:
    """unzip writes under real names: an interrupted one must not leave a truncated file
    that passes for the real thing (rsync keeps its partial aside)."""
    src = make_session_tree(tmp_path / "src", n_audio=12, audio_size=256 * 1024)
    target = sshd.endpoint(tiny_fs) if where == "ssh" else LocalEndpoint(tiny_fs)
    events: list[PhaseEvent] = []
    with pytest.raises(NoSpaceError):
        execute_plan(decide_strategy(TransferJob(LocalEndpoint(src), target), force=strategy),
                     options=engine_options, on_phase=events.append)
    # Written in the staging dir, which the failure removed: nothing under the final name.
    discarded = [e.details["removed"] for e in events
                 if e.phase == "discard_staging" and e.status == "done"]
    assert discarded == [True], "the disk should have filled part-way"
    assert list(tiny_fs.iterdir()) == []
    assert temp_leftovers(engine_options) == []
    if strategy is ZIP:
        cleanup = [e for e in events if e.phase == "cleanup" and e.status == "done"]
        assert cleanup and cleanup[0].details["removed_unfinished"]


def test_a_symlinked_source_is_refused_not_copied_as_a_link(tmp_path: Path,
                                                           engine_options: EngineOptions) -> None:
    src = make_session_tree(tmp_path / "real", n_audio=2)
    link = tmp_path / "Session link"
    link.symlink_to(src)
    job = TransferJob(LocalEndpoint(link), LocalEndpoint(tmp_path / "t"), TransferMode.MOVE)
    with pytest.raises(InvalidEndpointError, match="symlink"):
        execute_plan(decide_strategy(job), options=engine_options)
    assert link.is_symlink() and src.is_dir()
