"""Proof of a good copy (issue 14), through the real engine: rsync, zip/unzip, a real sshd.

Each test reproduces a way the promise "a move never deletes what it did not deliver"
broke with size-only verification. Faults are injected at an exact moment from the
engine's own phase events (the callback runs in the job's thread, so the job waits
for it): no sleeps.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mvp_core.transfer_engine.content import XXH128, hash_local_file
from mvp_core.transfer_engine.delivery import staging_name
from mvp_core.transfer_engine.endpoints import LocalEndpoint
from mvp_core.transfer_engine.errors import (
    InvalidEndpointError,
    SourceChangedError,
    SourceNotDeletableError,
    TargetExistsError,
    VerificationError,
)
from mvp_core.transfer_engine.execute import discard_job_staging, execute_plan
from mvp_core.transfer_engine.job import OnExisting, TransferJob, TransferMode
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.planner import TransferStrategy, decide_strategy
from mvp_core.transfer_engine.results import CancelToken, PhaseEvent, TransferResult
from tests.delivery.conftest import entries, target_for, temp_leftovers
from tests.fixtures.sshd import SshServer
from tests.fixtures.trees import make_session_tree, tree_snapshot

DIRECT, ZIP = TransferStrategy.DIRECT, TransferStrategy.ZIP_FIRST
STRATEGIES = [DIRECT, ZIP]
MOVE, COPY = TransferMode.MOVE, TransferMode.COPY
TAKE = "Audio Files/Kick_0002.wav"


def _run(job: TransferJob, strategy: TransferStrategy, options: EngineOptions,
         **kwargs: object) -> TransferResult:
    return execute_plan(decide_strategy(job, force=strategy), options=options,
                        **kwargs)  # type: ignore[arg-type]


def _at(phase: str, status: str, action: Callable[[], None]) -> Callable[[PhaseEvent], None]:
    """An ``on_phase`` that runs ``action`` once, when ``phase`` reaches ``status``."""
    fired: list[bool] = []

    def on_phase(e: PhaseEvent) -> None:
        if e.phase == phase and e.status == status and not fired:
            fired.append(True)
            action()
    return on_phase


def _rewrite_in_place(path: Path, *, keep_mtime: bool, offset: int = 0) -> None:
    """Overwrite bytes without changing the size (a DAW filling a preallocated file,
    or a header rewritten); with ``keep_mtime`` the mtime is put back too."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(16)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in old))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


# ---------------------------------------------------------------- 1. same-size change in place


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
@pytest.mark.parametrize("where", ["local", "ssh"])
@pytest.mark.parametrize("mode", [COPY, MOVE], ids=lambda m: m.value)
def test_source_rewritten_in_place_during_the_job_is_never_delivered_nor_deleted(
        tmp_path: Path, sshd: SshServer, options: EngineOptions, strategy: TransferStrategy,
        where: str, mode: TransferMode) -> None:
    """A render filled front to back while the job runs (size fixed, mtime moving)."""
    src = make_session_tree(tmp_path / "src", n_audio=6, audio_size=64 * 1024)
    out = tmp_path / "out"
    job = TransferJob(LocalEndpoint(src), target_for(where, out, sshd), mode, job_id="j1")
    before = tree_snapshot(src)
    hook = _at("verify", "started", lambda: _rewrite_in_place(src / TAKE, keep_mtime=False))
    with pytest.raises(SourceChangedError, match="still being written") as info:
        _run(job, strategy, options, on_phase=hook)
    assert TAKE in str(info.value)
    after = tree_snapshot(src)  # the source is all there, as the writer left it
    assert set(after) == set(before) and after[TAKE] != before[TAKE]
    assert entries(out) == []  # nothing delivered, staging removed
    assert temp_leftovers(options) == []


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
@pytest.mark.parametrize("where", ["local", "ssh"])
def test_header_rewritten_with_mtime_kept_is_caught_by_content(
        tmp_path: Path, sshd: SshServer, options: EngineOptions, strategy: TransferStrategy,
        where: str) -> None:
    """Same size, same mtime, other bytes: only the content hash can tell."""
    src = make_session_tree(tmp_path / "src", n_audio=6, audio_size=64 * 1024)
    out = tmp_path / "out"
    job = TransferJob(LocalEndpoint(src), target_for(where, out, sshd), MOVE, job_id="j2")
    hook = _at("verify", "started", lambda: _rewrite_in_place(src / TAKE, keep_mtime=True))
    with pytest.raises(VerificationError, match="content differs") as info:
        _run(job, strategy, options, on_phase=hook)
    assert TAKE in str(info.value)
    assert (src / TAKE).exists() and len(tree_snapshot(src)) > 10  # source untouched
    assert entries(out) == []


def test_verify_size_keeps_the_old_blind_spot(tmp_path: Path, options: EngineOptions) -> None:
    """``verify=size`` is today's behaviour, chosen knowingly: the same rewrite passes."""
    src = make_session_tree(tmp_path / "src", n_audio=4, audio_size=8192)
    out = tmp_path / "out"
    job = TransferJob(LocalEndpoint(src), LocalEndpoint(out), COPY, job_id="j3")
    hook = _at("verify", "started", lambda: _rewrite_in_place(src / TAKE, keep_mtime=True))
    result = _run(job, DIRECT, dataclasses.replace(options, verify="size"), on_phase=hook)
    assert result.algorithm is None and all(f.hash is None for f in result.files)
    assert (out / src.name / TAKE).read_bytes() != (src / TAKE).read_bytes()


# ---------------------------------------------------------------- 3. silent corruption


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
@pytest.mark.parametrize("where", ["local", "ssh"])
def test_byte_flipped_in_staging_with_mtime_kept_fails_and_keeps_the_source(
        tmp_path: Path, sshd: SshServer, options: EngineOptions, strategy: TransferStrategy,
        where: str) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=6, audio_size=64 * 1024)
    reference = tree_snapshot(src)
    out = tmp_path / "out"
    job = TransferJob(LocalEndpoint(src), target_for(where, out, sshd), MOVE, job_id="j4")
    staged = out / staging_name("j4") / src.name / TAKE
    hook = _at("verify", "started",
               lambda: _rewrite_in_place(staged, keep_mtime=True, offset=1000))
    with pytest.raises(VerificationError, match="content differs"):
        _run(job, strategy, options, on_phase=hook)
    assert tree_snapshot(src) == reference
    assert entries(out) == []


# ---------------------------------------------------------------- the receipt


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
@pytest.mark.parametrize("where", ["local", "ssh"])
def test_result_carries_every_file_with_its_content_hash(
        tmp_path: Path, sshd: SshServer, options: EngineOptions, strategy: TransferStrategy,
        where: str) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=5)
    out = tmp_path / "out"
    job = TransferJob(LocalEndpoint(src), target_for(where, out, sshd), COPY, job_id="j5")
    events: list[PhaseEvent] = []
    result = _run(job, strategy, options, on_phase=events.append)
    assert result.algorithm == XXH128  # the bootstrap installs xxhsum on the test host
    files = {f.path: f for f in result.files}
    expected = {str(p.relative_to(src)) for p in src.rglob("*") if p.is_file()}
    assert set(files) == expected
    for rel, f in files.items():
        landed = out / src.name / rel
        assert f.size == landed.stat().st_size
        assert f.hash == hash_local_file(str(landed), XXH128).digest
        assert f.mtime_ns == (src / rel).stat().st_mtime_ns
    verify = [e for e in events if e.phase == "verify" and e.status == "done"]
    assert verify[0].details["algorithm"] == XXH128


# ---------------------------------------------------------------- 2. changes after verification


def _append_and_add(src: Path) -> None:
    with open(src / TAKE, "ab") as f:
        f.write(b"late take")
    (src / "Audio Files" / "New Take.wav").write_bytes(b"RIFF new")


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
def test_move_keeps_what_changed_after_verification(
        tmp_path: Path, options: EngineOptions, strategy: TransferStrategy) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=6)
    reference = tree_snapshot(src)
    out = tmp_path / "out"
    job = TransferJob(LocalEndpoint(src), LocalEndpoint(out), MOVE, job_id="j6")
    with pytest.raises(SourceChangedError) as info:
        _run(job, strategy, options, on_phase=_at("deliver", "done", lambda: _append_and_add(src)))
    message = str(info.value)
    assert "delivered to" in message and TAKE in message and "New Take.wav" in message
    assert tree_snapshot(out / src.name) == reference  # what was verified is in place
    left = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
    assert left == ["Audio Files/Kick_0002.wav", "Audio Files/New Take.wav"]
    assert (src / TAKE).read_bytes().endswith(b"late take")


def test_move_from_an_ssh_source_never_removes_what_it_did_not_copy(
        tmp_path: Path, sshd: SshServer, options: EngineOptions) -> None:
    src = make_session_tree(tmp_path / "remote" / "lab", n_audio=6)
    reference = tree_snapshot(src)
    out = tmp_path / "out"
    job = TransferJob(sshd.endpoint(src), LocalEndpoint(out), MOVE, job_id="j7")
    with pytest.raises(SourceChangedError, match="kept"):
        _run(job, DIRECT, options, on_phase=_at("deliver", "done", lambda: _append_and_add(src)))
    assert tree_snapshot(out / src.name) == reference
    left = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
    assert left == ["Audio Files/Kick_0002.wav", "Audio Files/New Take.wav"]


def test_move_from_an_ssh_source_deletes_exactly_the_verified_files(
        tmp_path: Path, sshd: SshServer, options: EngineOptions) -> None:
    src = make_session_tree(tmp_path / "remote" / "lab", n_audio=6)
    (src / "-rf $(touch pwned)\n'q'").write_bytes(b"hostile")
    reference = tree_snapshot(src)
    out = tmp_path / "out"
    job = TransferJob(sshd.endpoint(src), LocalEndpoint(out), MOVE, job_id="j8")
    result = _run(job, DIRECT, options)
    assert tree_snapshot(out / src.name) == reference
    assert not src.exists() and (tmp_path / "remote" / "lab").is_dir()  # only the source went
    assert result.algorithm == XXH128 and len(result.files) == result.files_transferred
    assert not list(tmp_path.rglob("pwned"))


# ---------------------------------------------------------------- 5, 6, 7: merge


def test_merge_move_over_a_stale_same_size_same_mtime_file_delivers_the_source_bytes(
        tmp_path: Path, options: EngineOptions) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=4)
    reference = tree_snapshot(src)
    out = tmp_path / "out"
    stale = out / src.name / TAKE
    stale.parent.mkdir(parents=True)
    stale.write_bytes(bytes(b ^ 0x55 for b in (src / TAKE).read_bytes()))
    st = os.stat(src / TAKE)
    os.utime(stale, ns=(st.st_atime_ns, st.st_mtime_ns))
    job = TransferJob(LocalEndpoint(src), LocalEndpoint(out), MOVE, job_id="j9",
                      on_existing=OnExisting.MERGE)
    _run(job, DIRECT, options)
    assert tree_snapshot(out / src.name) == reference
    assert not src.exists()


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
@pytest.mark.parametrize("where", ["local", "ssh"])
def test_merge_over_a_regular_file_is_refused(tmp_path: Path, sshd: SshServer,
                                              options: EngineOptions,
                                              strategy: TransferStrategy, where: str) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=3)
    reference = tree_snapshot(src)
    out = tmp_path / "out"
    out.mkdir()
    (out / src.name).write_bytes(b"an editor's file")
    job = TransferJob(LocalEndpoint(src), target_for(where, out, sshd), MOVE, job_id="j10",
                      on_existing=OnExisting.MERGE)
    events: list[PhaseEvent] = []
    with pytest.raises(TargetExistsError, match="merge refused.*a file"):
        _run(job, strategy, options, on_phase=events.append)
    assert (out / src.name).read_bytes() == b"an editor's file"
    assert tree_snapshot(src) == reference
    assert not [e for e in events if e.phase in ("send", "zip")]


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
@pytest.mark.parametrize("where", ["local", "ssh"])
def test_merge_never_writes_through_a_symlink_in_the_existing_tree(
        tmp_path: Path, sshd: SshServer, options: EngineOptions, strategy: TransferStrategy,
        where: str) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=3)
    out = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_bytes(b"not Ketter's")
    (out / src.name).mkdir(parents=True)
    (out / src.name / "Audio Files").symlink_to(elsewhere)
    job = TransferJob(LocalEndpoint(src), target_for(where, out, sshd), COPY, job_id="j11",
                      on_existing=OnExisting.MERGE)
    with pytest.raises(TargetExistsError, match="symlinks"):
        _run(job, strategy, options)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]


# ---------------------------------------------------------------- 4. one storage, two names


@pytest.mark.parametrize("on_existing", [OnExisting.REPLACE, OnExisting.MERGE],
                         ids=lambda o: o.value)
@pytest.mark.parametrize("inside", [False, True], ids=["target-is-parent", "target-inside"])
def test_same_storage_under_two_names_is_refused(tmp_path: Path, sshd: SshServer,
                                                 options: EngineOptions,
                                                 on_existing: OnExisting, inside: bool) -> None:
    """Local source; the target an ssh portal to this very host, on the same folder."""
    lab = tmp_path / "lab"
    src = make_session_tree(lab, n_audio=4)
    reference = tree_snapshot(src)
    target = src / "Bounced Files" if inside else lab
    job = TransferJob(LocalEndpoint(src), sshd.endpoint(target), MOVE, job_id="j12",
                      on_existing=on_existing)
    events: list[PhaseEvent] = []
    with pytest.raises(InvalidEndpointError, match="same storage"):
        _run(job, DIRECT, options, on_phase=events.append)
    assert tree_snapshot(src) == reference
    assert not [e for e in events if e.phase == "send"]


@contextmanager
def _bind_mount(src: Path, mountpoint: Path) -> Iterator[bool]:
    mountpoint.mkdir(parents=True)
    done = subprocess.run(["mount", "--bind", str(src), str(mountpoint)], check=False,
                          capture_output=True).returncode == 0
    try:
        yield done
    finally:
        if done:
            subprocess.run(["umount", str(mountpoint)], check=False)


def test_same_folder_through_a_bind_mount_is_refused_by_device_and_inode(
        tmp_path: Path, options: EngineOptions) -> None:
    lab = tmp_path / "lab"
    src = make_session_tree(lab, n_audio=3)
    reference = tree_snapshot(src)
    with _bind_mount(lab, tmp_path / "nas" / "lab") as mounted:
        if not mounted:  # no CAP_SYS_ADMIN: the same check runs on a hard case below
            pytest.fail("mount --bind is needed for this test (run as root)")
        job = TransferJob(LocalEndpoint(src), LocalEndpoint(tmp_path / "nas" / "lab"), MOVE,
                          job_id="j13", on_existing=OnExisting.REPLACE)
        with pytest.raises(InvalidEndpointError, match="same storage"):
            _run(job, DIRECT, options)
    assert tree_snapshot(src) == reference


# ---------------------------------------------------------------- 12. a source that cannot be deleted


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
def test_move_of_a_source_that_cannot_be_emptied_is_refused_before_any_byte(
        tmp_path: Path, options: EngineOptions, strategy: TransferStrategy) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=3)
    locked = src / "Fade Files"
    subprocess.run(["chattr", "+i", str(locked)], check=True)
    try:
        out = tmp_path / "out"
        job = TransferJob(LocalEndpoint(src), LocalEndpoint(out), MOVE, job_id="j14")
        events: list[PhaseEvent] = []
        with pytest.raises(SourceNotDeletableError, match="Fade Files"):
            _run(job, strategy, options, on_phase=events.append)
        assert not [e for e in events if e.phase in ("send", "zip")]
        assert entries(out) == []
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)
    assert len(list(src.rglob("*.wav"))) == 6


# ---------------------------------------------------------------- 15. a folder named like ours


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
@pytest.mark.parametrize("where", ["local", "ssh"])
def test_a_source_holding_a_ketter_partial_folder_is_delivered_whole(
        tmp_path: Path, sshd: SshServer, options: EngineOptions, strategy: TransferStrategy,
        where: str) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=3)
    (src / "Audio Files" / ".ketter-partial").mkdir()
    (src / "Audio Files" / ".ketter-partial" / "kept.wav").write_bytes(b"RIFF kept")
    (src / ".ketter-partial").write_bytes(b"a file, even")
    reference = tree_snapshot(src)
    out = tmp_path / "out"
    job = TransferJob(LocalEndpoint(src), target_for(where, out, sshd), MOVE, job_id="j18")
    _run(job, strategy, options)
    assert tree_snapshot(out / src.name) == reference
    assert not src.exists()


# ---------------------------------------------------------------- 14. one temp dir on both sides


@pytest.mark.parametrize("chunk_bytes", [0, 16 * 1024], ids=["one-zip", "chunks"])
def test_zip_first_to_an_ssh_host_sharing_our_temp_dir(
        tmp_path: Path, sshd: SshServer, options: EngineOptions, chunk_bytes: int) -> None:
    """ssh to this very host with one /tmp: the zip sent must not be its own copy."""
    src = make_session_tree(tmp_path / "src", n_audio=8, audio_size=8192)
    reference = tree_snapshot(src)
    shared = dataclasses.replace(options, remote_temp_dir=str(options.temp_dir),
                                 **({"zip_chunk_bytes": chunk_bytes} if chunk_bytes else {}))
    out = tmp_path / "out"
    job = TransferJob(LocalEndpoint(src), sshd.endpoint(out), MOVE, job_id="j17")
    _run(job, ZIP, shared)
    assert tree_snapshot(out / src.name) == reference
    assert not src.exists()
    assert temp_leftovers(shared) == []


# ---------------------------------------------------------------- 8. the sweep and a replaced tree


@pytest.mark.parametrize("where", ["local", "ssh"])
def test_cleanup_of_a_done_replace_never_brings_the_old_tree_back(
        tmp_path: Path, sshd: SshServer, options: EngineOptions, where: str) -> None:
    """DONE, its staging root (holding the replaced tree) left for later; the delivered
    tree is then moved on by its users: the sweep must not put yesterday's tree back."""
    src = make_session_tree(tmp_path / "src", n_audio=3)
    out = tmp_path / "out"
    (out / src.name).mkdir(parents=True)
    (out / src.name / "old.wav").write_bytes(b"yesterday")
    job = TransferJob(LocalEndpoint(src), target_for(where, out, sshd), COPY, job_id="j16",
                      on_existing=OnExisting.REPLACE)
    _run(job, DIRECT, dataclasses.replace(options, staging_cleanup_by_caller=True))
    assert (out / staging_name("j16") / ".ketter-old" / "old.wav").exists()
    (out / src.name).rename(tmp_path / "moved on")
    assert discard_job_staging(job, options) is True
    assert entries(out) == []
    assert sorted(p.name for p in (tmp_path / "moved on").iterdir()) == sorted(
        p.name for p in src.iterdir())


# ---------------------------------------------------------------- 10. cancel racing the rename


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
@pytest.mark.parametrize("where", ["local", "ssh"])
def test_cancel_after_the_rename_is_ignored_and_the_job_finishes(
        tmp_path: Path, sshd: SshServer, options: EngineOptions, strategy: TransferStrategy,
        where: str) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=4)
    reference = tree_snapshot(src)
    out = tmp_path / "out"
    out.mkdir()
    (out / src.name).mkdir()
    (out / src.name / "old.wav").write_bytes(b"yesterday")
    job = TransferJob(LocalEndpoint(src), target_for(where, out, sshd), MOVE, job_id="j15",
                      on_existing=OnExisting.REPLACE)
    cancel = CancelToken()
    result = _run(job, strategy, options, cancel=cancel,
                  on_phase=_at("deliver", "started", cancel.cancel))
    assert any("cancel arrived after" in w for w in result.warnings)
    assert tree_snapshot(out / src.name) == reference
    assert not src.exists()


# ---------------------------------------------------------------- fidelity losses are said


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
def test_hard_links_sparse_files_and_xattrs_are_reported_not_silently_dropped(
        tmp_path: Path, options: EngineOptions, strategy: TransferStrategy) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=3)
    os.link(src / TAKE, src / "Audio Files" / "Kick link.wav")
    with open(src / "Bounced Files" / "Render.mov", "wb") as f:
        f.truncate(4 * 1024 * 1024)  # all hole
    os.setxattr(src / "Test Session.ptx", "user.com.apple.FinderInfo", b"tagged")
    out = tmp_path / "out"
    job = TransferJob(LocalEndpoint(src), LocalEndpoint(out), COPY, job_id="j19")
    result = _run(job, strategy, options)
    said = " | ".join(result.warnings)
    assert "hard links" in said and "Kick link.wav" in said
    assert "sparse" in said and "Render.mov" in said
    assert "extended attributes" in said and "Test Session.ptx" in said
    # The content itself is whole and verified.
    assert (out / src.name / "Bounced Files" / "Render.mov").stat().st_size == 4 * 1024 * 1024


# ---------------------------------------------------------------- 9. strays in staging


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
@pytest.mark.parametrize("where", ["local", "ssh"])
def test_a_killed_receivers_temp_file_in_staging_is_never_delivered(
        tmp_path: Path, sshd: SshServer, options: EngineOptions, strategy: TransferStrategy,
        where: str) -> None:
    """What a receiver killed mid-file leaves (rsync's hidden temp name), found at verify."""
    src = make_session_tree(tmp_path / "src", n_audio=3)
    reference = tree_snapshot(src)
    out = tmp_path / "out"
    staged = out / staging_name("j20") / src.name

    def stray() -> None:
        # Left by an earlier attempt; the retry's send then gave the folder its time back.
        folder = staged / "Audio Files"
        st = os.stat(folder)
        (folder / ".Kick_0001.wav.Ab12Cd").write_bytes(b"half a take")
        (folder / ".ketter-partial").mkdir(exist_ok=True)
        (folder / ".ketter-partial" / "Kick_0001.wav").write_bytes(b"half")
        os.utime(folder, ns=(st.st_atime_ns, st.st_mtime_ns))

    job = TransferJob(LocalEndpoint(src), target_for(where, out, sshd), MOVE, job_id="j20")
    result = _run(job, strategy, options, on_phase=_at("verify", "started", stray))
    assert tree_snapshot(out / src.name) == reference
    assert any("stray" in w and ".Kick_0001.wav.Ab12Cd" in w for w in result.warnings)
    assert {f.path for f in result.files} == {
        str(p.relative_to(out / src.name)) for p in (out / src.name).rglob("*") if p.is_file()}


# ---------------------------------------------------------------- 16. two installations, one target


def test_staging_names_carry_the_installation() -> None:
    from mvp_core.worker.job_mapping import engine_job_id
    from mvp_core.worker.staging import staging_job_id

    ours = staging_name(engine_job_id(12, "a1b2c3d4"))
    assert ours == ".ketter-a1b2c3d4-job-12"
    assert staging_job_id(ours, "a1b2c3d4") == 12
    assert staging_job_id(ours, "ffffffff") is None  # another installation's: never swept
    assert staging_job_id(".ketter-job-12", "a1b2c3d4") is None  # ids alone are not ours


# ---------------------------------------------------------------- what the remote can hash


@pytest.fixture(scope="module")
def sshd_without_hash_tools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real sshd whose sessions have rsync and the POSIX tools but no hash tool."""
    import shutil as sh

    from tests.fixtures.sshd import _PATH_TOOLS, start_sshd, stop_sshd

    workdir = tmp_path_factory.mktemp("sshd_nohash")
    bindir = workdir / "bin"
    bindir.mkdir()
    for tool in (*_PATH_TOOLS, "unzip"):
        found = sh.which(tool)
        if found and tool not in ("sha256sum", "xxhsum", "md5sum", "shasum", "md5"):
            (bindir / tool).symlink_to(found)
    server = start_sshd(workdir, extra_config=f"SetEnv PATH={bindir}\n")
    try:
        yield server
    finally:
        stop_sshd(server)


def test_a_host_with_only_sha256sum_is_verified_with_sha256(
        tmp_path: Path, sshd_without_unzip: SshServer, options: EngineOptions) -> None:
    import hashlib

    src = make_session_tree(tmp_path / "src", n_audio=4)
    (src / "Audio Files" / "odd\nname\\.wav").write_bytes(b"RIFF odd")
    out = tmp_path / "out"
    job = TransferJob(LocalEndpoint(src), sshd_without_unzip.endpoint(out), MOVE, job_id="j21")
    result = _run(job, DIRECT, options)
    assert result.algorithm == "sha256"
    for f in result.files:
        assert f.hash == hashlib.sha256((out / src.name / f.path).read_bytes()).hexdigest()
    assert not src.exists()


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
def test_a_host_with_no_hash_tool_is_refused_before_any_byte_unless_size_is_chosen(
        tmp_path: Path, sshd_without_hash_tools: SshServer, options: EngineOptions,
        strategy: TransferStrategy) -> None:
    from mvp_core.transfer_engine.errors import RemoteCommandMissingError

    src = make_session_tree(tmp_path / "src", n_audio=3)
    reference = tree_snapshot(src)
    out = tmp_path / "out"
    job = TransferJob(LocalEndpoint(src), sshd_without_hash_tools.endpoint(out), MOVE,
                      job_id="j22")
    events: list[PhaseEvent] = []
    with pytest.raises(RemoteCommandMissingError, match="no hash tool.*verify=size"):
        _run(job, strategy, options, on_phase=events.append)
    assert not [e for e in events if e.phase in ("send", "zip")]
    assert tree_snapshot(src) == reference and entries(out) == []
    result = _run(job, strategy, dataclasses.replace(options, verify="size"))
    assert result.algorithm is None
    assert tree_snapshot(out / src.name) == reference


# ---------------------------------------------------------------- the ASC MHL receipt


ASCMHL_VENV = Path(__file__).resolve().parents[2] / ".cache" / "ascmhl-venv"


@pytest.fixture(scope="session")
def ascmhl() -> Path:
    """The reference ``ascmhl`` tool, in a venv of its own (it pins an old Click, ships
    a top-level ``tests`` package and checks for updates at start: never in ours)."""
    exe = ASCMHL_VENV / "bin" / "ascmhl"
    if not exe.exists():
        subprocess.run(["python3", "-m", "venv", str(ASCMHL_VENV)], check=True)
        subprocess.run([str(ASCMHL_VENV / "bin" / "pip"), "install", "-q", "ascmhl==1.2"],
                       check=True)
    return exe


def _ascmhl(exe: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Its start-up update check (a GitHub call) goes to a closed local port and fails at
    # once: no traffic leaves the machine and no test waits on it.
    env = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "NO_PROXY": "", "no_proxy": ""}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, check=False,
                          env=env, timeout=120)


@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda s: s.value)
@pytest.mark.parametrize("where", ["local", "ssh"])
def test_the_delivered_folder_carries_an_asc_mhl_the_reference_tool_accepts(
        tmp_path: Path, sshd: SshServer, options: EngineOptions, strategy: TransferStrategy,
        where: str, ascmhl: Path) -> None:
    src = make_session_tree(tmp_path / "src", "Sessão Final", n_audio=5)
    (src / "Audio Files" / "Take <1> & 'two'.wav").write_bytes(b"RIFF quoted")
    out = tmp_path / "out"
    job = TransferJob(LocalEndpoint(src), target_for(where, out, sshd), MOVE, job_id="j23")
    result = _run(job, strategy, dataclasses.replace(options, write_mhl=True))
    delivered = out / src.name
    names = sorted(p.name for p in (delivered / "ascmhl").iterdir())
    assert names[1] == "ascmhl_chain.xml" and names[0].startswith("0001_") and len(names) == 2
    assert {f.path for f in result.files} == {
        str(p.relative_to(delivered)) for p in delivered.rglob("*")
        if p.is_file() and p.parts[len(delivered.parts)] != "ascmhl"}
    # The receiving side's check: no file missing or new, every hash as recorded. `create`
    # verifies the history before it adds a generation (on a copy: it writes one).
    check = tmp_path / "check" / src.name
    shutil.copytree(delivered, check)
    diff = _ascmhl(ascmhl, "diff", str(check))
    assert diff.returncode == 0, diff.stdout + diff.stderr
    ok = _ascmhl(ascmhl, "create", "-h", "xxh128", str(check))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "bad" / src.name
    shutil.copytree(delivered, bad)
    _rewrite_in_place(bad / TAKE, keep_mtime=True)
    caught = _ascmhl(ascmhl, "create", "-h", "xxh128", str(bad))
    assert caught.returncode != 0 and "mismatch" in caught.stdout + caught.stderr


def test_no_asc_mhl_where_it_could_not_be_faithful(
        tmp_path: Path, sshd_without_unzip: SshServer, options: EngineOptions) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=2)
    out = tmp_path / "out"
    job = TransferJob(LocalEndpoint(src), sshd_without_unzip.endpoint(out), COPY, job_id="j24")
    result = _run(job, DIRECT, dataclasses.replace(options, write_mhl=True))
    assert result.algorithm == "sha256"
    assert any("ASC MHL not written" in w and "sha256" in w for w in result.warnings)
    assert not (out / src.name / "ascmhl").exists()
