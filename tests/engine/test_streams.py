"""DIRECT's parallel streams: the partition (pure), then real transfers with several
rsyncs over the loopback sshd: identical trees, one cancel, one error, resume, move."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mvp_core.transfer_engine import streams
from mvp_core.transfer_engine.delivery import staging_root
from mvp_core.transfer_engine.direct import run_transfer, stream_list_path
from mvp_core.transfer_engine.endpoints import LocalEndpoint
from mvp_core.transfer_engine.errors import (
    CommandFailedError,
    NoSpaceError,
    SourceChangedError,
    TransferCancelledError,
)
from mvp_core.transfer_engine.execute import execute_plan
from mvp_core.transfer_engine.job import OnExisting, TransferJob, TransferMode
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.planner import TransferStrategy, decide_strategy
from mvp_core.transfer_engine.results import CancelToken, PhaseEvent, Progress
from mvp_core.transfer_engine.streams import Stream, encode_list, partition, plan_streams
from tests.engine.conftest import temp_leftovers
from tests.fixtures.sshd import SshServer
from tests.fixtures.system import is_below, process_table
from tests.fixtures.trees import (
    HOSTILE_FILES,
    assert_trees_identical,
    make_hostile_tree,
    make_session_tree,
    tree_snapshot,
)

MiB = 1024 * 1024
DIRECT = TransferStrategy.DIRECT


# ---------------------------------------------------------------- the partition (pure)


def _files(*sizes: int) -> list[tuple[str, int]]:
    return [(f"f{i:04d}", size) for i, size in enumerate(sizes)]


def _covers(parts: list[Stream], files: list[tuple[str, int]]) -> None:
    """Every file in exactly one stream, whole, and each stream's bytes add up."""
    placed = Counter(rel for part in parts for rel in part.files)
    assert placed == Counter(rel for rel, _ in files)
    sizes = dict(files)
    for part in parts:
        assert part.bytes == sum(sizes[rel] for rel in part.files)
        assert list(part.files) == sorted(part.files)


def test_equal_files_split_evenly() -> None:
    files = _files(*([MiB] * 2000))
    parts = partition(files, 4)
    _covers(parts, files)
    assert [p.bytes for p in parts] == [500 * MiB] * 4
    assert [p.n_files for p in parts] == [500] * 4


def test_largest_first_into_the_lightest_stream() -> None:
    # 8|7|6, then 5->6, 4->7, 3->8 (11 each), 2 -> the first of those, 1 -> the next.
    files = _files(8, 7, 6, 5, 4, 3, 2, 1)
    parts = partition([(rel, size * MiB) for rel, size in files], 3)
    assert [(p.files, p.bytes // MiB) for p in parts] == [
        (("f0000", "f0005", "f0006"), 13),
        (("f0001", "f0004", "f0007"), 12),
        (("f0002", "f0003"), 11),
    ]


def test_a_large_file_is_never_split_and_goes_alone() -> None:
    files = _files(1024 * MiB, *([MiB] * 30))
    parts = partition(files, 4)
    _covers(parts, files)
    big = [p for p in parts if "f0000" in p.files]
    assert len(big) == 1 and big[0].files == ("f0000",)


def test_more_streams_than_files_gives_one_per_file() -> None:
    parts = partition(_files(5, 3), 8)
    assert sorted(p.files for p in parts) == [("f0000",), ("f0001",)]


def test_the_split_is_deterministic() -> None:
    files = _files(*(((i * 7919) % 101) * 1000 for i in range(500)))
    assert partition(files, 4) == partition(list(reversed(files)), 4)


def test_per_file_cost_balances_counts_too() -> None:
    # 1000 empty files and 2 of 8 MiB. By bytes alone all 1000 would pile into the third
    # stream; each weighing 16 KiB, 512 of them match 8 MiB, the other 488 spread evenly.
    files = _files(8 * MiB, 8 * MiB, *([0] * 1000))
    parts = partition(files, 3)
    assert sorted(p.n_files for p in parts) == [163, 164, 675]
    assert sorted(p.bytes for p in parts) == [0, 8 * MiB, 8 * MiB]


@pytest.mark.parametrize(("sizes", "requested", "expected"), [
    ([MiB] * 2000, 4, 4),                      # MANY: 2000 MiB
    ([512 * MiB] * 4, 4, 4),                   # FEW: 4 x 512 MiB
    ([512 * MiB] * 4, 8, 4),                   # never more streams than files
    ([1024] * 2000, 4, 1),                     # TINY: 2 MiB, one rsync as before
    ([MiB] * 2000, 1, 1),                      # one asked for
    ([1024 * MiB] + [MiB] * 10, 4, 1),         # one big file decides the finish anyway
    ([50 * MiB] * 4, 4, 2),                    # 3 would leave streams of 50 MiB < 64
    ([100 * MiB] * 2, 4, 2),
    ([63 * MiB] * 2, 4, 1),
    ([], 4, 1),
    ([0] * 100, 4, 1),
])
def test_stream_count_respects_the_floor(sizes: list[int], requested: int,
                                         expected: int) -> None:
    files = _files(*sizes)
    parts = plan_streams(files, requested)
    assert len(parts) == expected
    _covers(parts, files)
    if expected > 1:
        assert min(p.bytes for p in parts) >= streams.MIN_STREAM_BYTES


def test_floor_can_be_lowered() -> None:
    parts = plan_streams(_files(10, 20, 30), 3, min_stream_bytes=1)
    assert sorted(p.bytes for p in parts) == [10, 20, 30]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10**9), max_size=60),
       st.integers(min_value=1, max_value=8))
def test_partition_properties(sizes: list[int], n: int) -> None:
    files = _files(*sizes)
    parts = partition(files, n)
    _covers(parts, files)
    assert len(parts) <= max(1, min(n, len(files)))
    if parts:
        # LPT: the heaviest stream exceeds the average by at most one file (+ its cost).
        weights = [p.bytes + p.n_files * streams.PER_FILE_WEIGHT for p in parts]
        biggest = max(sizes) + streams.PER_FILE_WEIGHT
        assert max(weights) <= sum(weights) / len(parts) + biggest


def test_list_encoding_keeps_hostile_names_whole() -> None:
    names = [rel for rel, _mode in HOSTILE_FILES] + ["caf\udce9 latin1.wav"]
    data = encode_list("-src 'x'\n", names)
    assert data.endswith(b"\0")
    back = [os.fsdecode(n) for n in data.split(b"\0")[:-1]]
    assert back == [f"-src 'x'\n/{n}" for n in names]


def test_a_linked_cancel_token() -> None:
    job = CancelToken()
    one, two = CancelToken(parent=job), CancelToken(parent=job)
    one.cancel()
    assert one.cancelled and not two.cancelled and not job.cancelled
    assert not two.wait(0.01)
    job.cancel()
    assert two.cancelled and two.wait(0.01)


# ---------------------------------------------------------------- real transfers


@pytest.fixture
def low_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small test trees get several streams too (the real floor is 64 MiB)."""
    monkeypatch.setattr(streams, "MIN_STREAM_BYTES", 1)


def _opts(options: EngineOptions, n: int, **more: object) -> EngineOptions:
    return dataclasses.replace(options, direct_streams=n, **more)  # type: ignore[arg-type]


def _send_done(events: list[PhaseEvent]) -> PhaseEvent:
    done = [e for e in events if e.phase == "send" and e.status in ("done", "failed")]
    assert len(done) == 1, events
    return done[0]


def _mixed_tree(parent: Path) -> Path:
    """Nested dirs, an empty dir, exec bits, read-only folder, mtimes, hostile names."""
    root = make_hostile_tree(parent, name="-mixed 'tree' $(x);`y`")
    session = make_session_tree(root, n_audio=9, audio_size=40 * 1024)
    ro = session / "read only folder"
    ro.mkdir()
    (ro / "locked.wav").write_bytes(b"x" * 5000)
    os.utime(ro / "locked.wav", (1_000_000_000, 1_000_000_000))
    os.chmod(ro, 0o555)
    os.utime(ro, (1_000_000_000, 1_000_000_000))
    os.utime(session, (1_100_000_000, 1_100_000_000))
    os.utime(root, (1_200_000_000, 1_200_000_000))
    return root


def _our_processes(*markers: str) -> list[str]:
    """Live processes whose command line holds one of ``markers``."""
    me = os.getpid()
    return [f"{p.pid}: {p.cmdline}" for p in process_table().values()
            if p.pid != me and any(m in p.cmdline for m in markers)]


def _descendants(root_pid: int) -> list[str]:
    """Command lines of every process below ``root_pid`` (the sshd fixture: its
    per-connection sshd and anything those run, the remote rsyncs)."""
    table = process_table()
    return [f"{p.pid}: {p.cmdline}" for p in table.values() if is_below(table, p.pid, root_pid)]


def _assert_nothing_left(tmp_path: Path, sshd: SshServer) -> None:
    """No rsync or ssh of this test (here or at the "remote" end) still runs."""
    assert sshd.process is not None
    deadline = time.monotonic() + 10
    while True:
        left = (_our_processes(str(tmp_path), str(sshd.identity_file))
                + [d for d in _descendants(sshd.process.pid) if "rsync" in d])
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert left == []


@pytest.mark.parametrize("where", ["ssh", "local"])
def test_three_streams_give_the_single_stream_tree(tmp_path: Path, sshd: SshServer,
                                                   engine_options: EngineOptions,
                                                   low_floor: None, where: str) -> None:
    src = _mixed_tree(tmp_path / "-src dir $HOME ; `x` 'q'")  # hostile parent too
    reference = tree_snapshot(src)
    landed = {}
    for n in (1, 3):
        dest = tmp_path / f"dest {n}"
        target = sshd.endpoint(dest) if where == "ssh" else LocalEndpoint(dest)
        events: list[PhaseEvent] = []
        seen: list[Progress] = []
        plan = decide_strategy(TransferJob(LocalEndpoint(src), target, job_id=f"s{n}"),
                               force=DIRECT)
        result = execute_plan(plan, options=_opts(engine_options, n),
                              on_phase=events.append, progress=seen.append)
        assert result.streams == n
        assert result.files_transferred == plan.n_files
        send = _send_done(events)
        assert send.status == "done" and send.details["streams"] == n
        if n > 1:
            # Each stream carried its share; the final pass had no file left to send.
            assert len(send.details["stream_files"]) == n
            assert sum(send.details["stream_files"]) == plan.n_files
            assert sum(send.details["stream_bytes"]) == plan.total_bytes
            assert all(s > 0 for s in send.details["stream_s"])
            assert send.details["final_pass_files"] == 0
            assert send.details["final_pass_bytes"] == 0
        # One progress for the job: its total, never going back, ending complete.
        assert seen and {p.phase for p in seen} == {"send"}
        assert {p.bytes_total for p in seen} == {plan.total_bytes}
        done = [p.bytes_done for p in seen]
        assert done == sorted(done) and done[-1] == plan.total_bytes
        landed[n] = dest / src.name
        assert_trees_identical(src, landed[n])
        assert not (dest / ".ketter-s1").exists() and not (dest / ".ketter-s3").exists()
    assert_trees_identical(landed[1], landed[3])
    assert tree_snapshot(src) == reference
    assert temp_leftovers(engine_options) == []  # the stream lists are gone
    assert not list(tmp_path.rglob(".ketter-partial"))
    assert not list(tmp_path.rglob("injected*")) and not list(Path.home().glob("injected*"))


def test_default_floor_keeps_small_trees_on_one_rsync(tmp_path: Path, sshd: SshServer,
                                                       engine_options: EngineOptions) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=8)
    events: list[PhaseEvent] = []
    result = run_transfer(TransferJob(LocalEndpoint(src), sshd.endpoint(tmp_path / "t")),
                          options=_opts(engine_options, 8), on_phase=events.append)
    assert result.streams == 1
    send = _send_done(events)
    assert send.details["streams"] == 1 and "stream_files" not in send.details
    assert_trees_identical(src, tmp_path / "t" / src.name)
    assert not (Path(engine_options.temp_dir).exists()
                and list(Path(engine_options.temp_dir).iterdir()))


def test_a_single_file_stays_one_stream(tmp_path: Path, sshd: SshServer,
                                        engine_options: EngineOptions,
                                        low_floor: None) -> None:
    src = make_session_tree(tmp_path / "remote src", n_audio=6)
    one = src / "Test Session.ptx"
    for job in (TransferJob(LocalEndpoint(one), sshd.endpoint(tmp_path / "f")),
                TransferJob(sshd.endpoint(one), LocalEndpoint(tmp_path / "g"))):
        result = run_transfer(job, options=_opts(engine_options, 4))
        assert result.streams == 1
        assert (Path(str(job.target.path)) / one.name).read_bytes() == one.read_bytes()


def test_a_pull_splits_into_streams(tmp_path: Path, sshd: SshServer,
                                    engine_options: EngineOptions, low_floor: None) -> None:
    """issue 18: a remote source is listed once and split like a push; the tree that
    lands is the one a single rsync gives, hostile names and read-only folders too."""
    src = _mixed_tree(tmp_path / "-remote src $HOME ; `x` 'q'")
    reference = tree_snapshot(src)
    landed = {}
    for n in (1, 3):
        here = tmp_path / f"here {n}"
        events: list[PhaseEvent] = []
        seen: list[Progress] = []
        job = TransferJob(sshd.endpoint(src), LocalEndpoint(here), job_id=f"pull{n}")
        result = run_transfer(job, options=_opts(engine_options, n), on_phase=events.append,
                              progress=seen.append)
        assert result.streams == n
        send = _send_done(events)
        assert send.status == "done" and send.details["streams"] == n
        if n > 1:
            assert sum(send.details["stream_files"]) == result.files_transferred
            assert send.details["final_pass_files"] == 0  # the streams carried every file
        done = [p.bytes_done for p in seen]
        assert done == sorted(done) and done[-1] == result.bytes_transferred
        landed[n] = here / src.name
        assert_trees_identical(src, landed[n])
        assert not (here / f".ketter-pull{n}").exists()
    assert_trees_identical(landed[1], landed[3])
    assert tree_snapshot(src) == reference
    assert temp_leftovers(engine_options) == []
    assert not list(tmp_path.rglob(".ketter-partial"))


def test_a_pulled_move_deletes_the_remote_source_only_after_verify(
        tmp_path: Path, sshd: SshServer, engine_options: EngineOptions,
        low_floor: None) -> None:
    src = _mixed_tree(tmp_path / "remote")
    copy = _mixed_tree(tmp_path / "reference")
    events: list[PhaseEvent] = []
    existed_at_verify: list[bool] = []

    def on_phase(e: PhaseEvent) -> None:
        events.append(e)
        if e.phase == "verify" and e.status == "done":
            existed_at_verify.append(src.exists())

    job = TransferJob(sshd.endpoint(src), LocalEndpoint(tmp_path / "here"), TransferMode.MOVE,
                      job_id="pull-move")
    result = execute_plan(decide_strategy(job), options=_opts(engine_options, 3),
                          on_phase=on_phase)
    assert result.streams == 3
    order = [e.phase for e in events if e.status == "done"]
    assert order == ["send", "verify", "deliver", "flush", "delete_source"]
    verify = next(e for e in events if e.phase == "verify" and e.status == "done")
    assert existed_at_verify == [True]
    assert not src.exists()
    assert_trees_identical(copy, tmp_path / "here" / src.name, root_mtime=False,
                           dir_mtimes=True)
    assert verify.details  # what was verified is said in the event


def test_a_pulled_file_changed_during_the_send_is_not_deleted(
        tmp_path: Path, sshd: SshServer, engine_options: EngineOptions,
        low_floor: None) -> None:
    """The move's guard holds for pulls: a remote file rewritten after the listing
    (same size, new content) fails verification and nothing at the source goes."""
    src = _slow_tree(tmp_path / "remote")
    victim = src / "Audio Files" / "take 1.wav"

    def on_phase(e: PhaseEvent) -> None:
        if e.phase == "send" and e.status == "done":
            victim.write_bytes(os.urandom(512 * 1024))

    job = TransferJob(sshd.endpoint(src), LocalEndpoint(tmp_path / "here"), TransferMode.MOVE,
                      job_id="pull-changed")
    with pytest.raises(SourceChangedError, match="take 1.wav"):
        run_transfer(job, options=_opts(engine_options, 3), on_phase=on_phase)
    assert victim.exists() and len(list(src.rglob("*.wav"))) == 3
    assert not (tmp_path / "here" / src.name).exists()


def test_move_deletes_the_source_only_after_verify(tmp_path: Path, sshd: SshServer,
                                                   engine_options: EngineOptions,
                                                   low_floor: None) -> None:
    src = _mixed_tree(tmp_path / "src")
    copy = _mixed_tree(tmp_path / "reference")
    events: list[PhaseEvent] = []
    existed_at_verify: list[bool] = []

    def on_phase(e: PhaseEvent) -> None:
        events.append(e)
        if e.phase == "verify" and e.status == "done":
            existed_at_verify.append(src.exists())

    job = TransferJob(LocalEndpoint(src), sshd.endpoint(tmp_path / "t"), TransferMode.MOVE)
    result = execute_plan(decide_strategy(job, force=DIRECT),
                          options=_opts(engine_options, 3), on_phase=on_phase)
    assert result.streams == 3
    order = [e.phase for e in events if e.status == "done"]
    assert order == ["send", "verify", "deliver", "flush", "delete_source"]
    assert existed_at_verify == [True]
    assert not src.exists()
    assert_trees_identical(copy, tmp_path / "t" / src.name, root_mtime=False,
                           dir_mtimes=True)


def _slow_tree(parent: Path) -> Path:
    """Three 512 KiB files (three streams) plus a few small ones."""
    root = parent / "slow session"
    (root / "Audio Files").mkdir(parents=True)
    (root / "empty").mkdir()
    for i in range(3):
        (root / "Audio Files" / f"take {i}.wav").write_bytes(os.urandom(512 * 1024))
    for i in range(6):
        (root / f"note {i}.txt").write_bytes(os.urandom(1000 + i))
    return root


def test_cancel_stops_every_stream(tmp_path: Path, sshd: SshServer,
                                   engine_options: EngineOptions, low_floor: None) -> None:
    src = _slow_tree(tmp_path / "src")
    reference = tree_snapshot(src)
    job = TransferJob(LocalEndpoint(src), sshd.endpoint(tmp_path / "t"), TransferMode.MOVE,
                      job_id="cancel-streams")
    cancel = CancelToken()
    seen: list[Progress] = []

    def progress(p: Progress) -> None:
        seen.append(p)
        if p.bytes_done > 200 * 1024:  # several streams are under way by then
            cancel.cancel()

    events: list[PhaseEvent] = []
    started = time.monotonic()
    with pytest.raises(TransferCancelledError):
        run_transfer(job, options=_opts(engine_options, 3, bwlimit_kib_s=192), cancel=cancel,
                     progress=progress, on_phase=events.append)
    assert time.monotonic() - started < 20  # 1.5 MiB at 192 KiB/s would take ~8 s more
    assert cancel.cancelled
    send = _send_done(events)
    assert send.status == "failed" and send.details["streams"] == 3
    assert send.details["error"] == "TransferCancelledError"
    _assert_nothing_left(tmp_path, sshd)
    assert temp_leftovers(engine_options) == []
    assert not stream_list_path(job, engine_options, 0).exists()
    assert tree_snapshot(src) == reference  # a cancelled move deletes nothing
    assert not (tmp_path / "t" / src.name).exists()
    # And the job can run again to the end.
    result = run_transfer(job, options=_opts(engine_options, 3))
    assert result.streams == 3 and not src.exists()
    assert tree_snapshot(tmp_path / "t" / src.name) == reference


def test_a_failing_stream_stops_the_others_with_its_own_error(
        tmp_path: Path, sshd: SshServer, engine_options: EngineOptions,
        low_floor: None) -> None:
    src = _slow_tree(tmp_path / "src")
    reference = tree_snapshot(src)
    job = TransferJob(LocalEndpoint(src), sshd.endpoint(tmp_path / "t"), TransferMode.MOVE,
                      job_id="one-fails")
    staged = Path(str(staging_root(job).path)) / src.name

    def block(e: PhaseEvent) -> None:
        # A non-empty folder where a small file must land: only the stream carrying the
        # small files fails (rsync cannot make way), and fast; the others are slow.
        if e.phase == "send" and e.status == "started":
            (staged / "note 0.txt" / "in the way").mkdir(parents=True)

    events: list[PhaseEvent] = []

    def on_phase(e: PhaseEvent) -> None:
        events.append(e)
        block(e)

    started = time.monotonic()
    with pytest.raises(CommandFailedError) as info:
        run_transfer(job, options=_opts(engine_options, 4, bwlimit_kib_s=64),
                     on_phase=on_phase)
    assert time.monotonic() - started < 20  # 1.5 MiB at 64 KiB/s would take ~25 s
    error = info.value
    assert type(error) is CommandFailedError and not error.transient
    assert error.exit_code == 23, error.as_dict()
    assert "note 0.txt" in error.stderr_tail
    assert error.argv is not None and any(a.startswith("--files-from=") for a in error.argv)
    send = _send_done(events)
    assert send.status == "failed" and send.details["error"] == "CommandFailedError"
    assert send.details["streams"] == 4
    _assert_nothing_left(tmp_path, sshd)
    assert temp_leftovers(engine_options) == []
    assert tree_snapshot(src) == reference
    assert list((tmp_path / "t").iterdir()) == []  # a permanent failure discards staging


def test_a_killed_stream_is_transient_and_the_retry_resumes(
        tmp_path: Path, sshd: SshServer, engine_options: EngineOptions,
        low_floor: None) -> None:
    src = _slow_tree(tmp_path / "src")
    reference = tree_snapshot(src)
    job = TransferJob(LocalEndpoint(src), sshd.endpoint(tmp_path / "t"), job_id="killed")
    killed: list[int] = []
    marker = f"--files-from={stream_list_path(job, engine_options, 0)}"

    def progress(p: Progress) -> None:
        if not killed and p.bytes_done > 200 * 1024:
            pids = [int(line.split(":")[0]) for line in _our_processes(marker)
                    if line.split(": ", 1)[1].startswith("rsync ")]
            if pids:
                os.kill(min(pids), signal.SIGTERM)  # stream 0's rsync, as if killed
                killed.append(min(pids))

    with pytest.raises(CommandFailedError) as info:
        run_transfer(job, options=_opts(engine_options, 3, bwlimit_kib_s=192),
                     progress=progress)
    assert killed
    error = info.value
    assert type(error) is CommandFailedError and error.transient, error.as_dict()
    assert error.argv is not None and marker in error.argv
    _assert_nothing_left(tmp_path, sshd)
    assert temp_leftovers(engine_options) == []
    # Transient: the staged tree stays for the retry, which resumes into it.
    staged = Path(str(staging_root(job).path)) / src.name
    assert staged.is_dir()
    assert any(p.is_file() for p in staged.rglob("*"))
    result = run_transfer(job, options=_opts(engine_options, 3))
    assert result.streams == 3
    assert tree_snapshot(tmp_path / "t" / src.name) == reference
    assert not list((tmp_path / "t").rglob(".ketter-partial"))
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [src.name]


def test_bwlimit_is_shared_by_the_streams(tmp_path: Path, engine_options: EngineOptions,
                                          low_floor: None) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(4):
        (src / f"f{i}.bin").write_bytes(os.urandom(256 * 1024))
    started = time.monotonic()
    result = run_transfer(TransferJob(LocalEndpoint(src), LocalEndpoint(tmp_path / "t")),
                          options=_opts(engine_options, 4, bwlimit_kib_s=512))
    elapsed = time.monotonic() - started
    assert result.streams == 4
    # 1 MiB at 512 KiB/s for the job: ~2 s; four unshared limits would take ~0.5 s.
    assert elapsed > 1.4, elapsed
    assert_trees_identical(src, tmp_path / "t" / "src")


@pytest.mark.parametrize("where", ["ssh", "local"])
def test_disk_full_in_every_stream_is_one_no_space_error(
        tmp_path: Path, sshd: SshServer, tiny_fs: Path, engine_options: EngineOptions,
        low_floor: None, where: str) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=12, audio_size=256 * 1024)
    target = sshd.endpoint(tiny_fs) if where == "ssh" else LocalEndpoint(tiny_fs)
    events: list[PhaseEvent] = []
    with pytest.raises(NoSpaceError) as info:
        run_transfer(TransferJob(LocalEndpoint(src), target),
                     options=_opts(engine_options, 3), on_phase=events.append)
    assert not info.value.transient
    send = _send_done(events)
    assert send.status == "failed" and send.details["streams"] == 3
    discarded = [e.details["removed"] for e in events
                 if e.phase == "discard_staging" and e.status == "done"]
    assert discarded == [True]
    assert list(tiny_fs.iterdir()) == []
    assert temp_leftovers(engine_options) == []
    _assert_nothing_left(tmp_path, sshd)


def test_replace_streams_into_staging_and_merge_stays_one_rsync(
        tmp_path: Path, sshd: SshServer, engine_options: EngineOptions,
        low_floor: None) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=6)
    final = tmp_path / "t" / src.name
    (final / "Audio Files").mkdir(parents=True)
    (final / "Audio Files" / "old take.wav").write_bytes(b"old")
    replace = TransferJob(LocalEndpoint(src), sshd.endpoint(tmp_path / "t"),
                          on_existing=OnExisting.REPLACE)
    result = run_transfer(replace, options=_opts(engine_options, 3))
    assert result.streams == 3
    assert_trees_identical(src, final)  # the old take went with the old tree
    (final / "Audio Files" / "old take.wav").write_bytes(b"old")
    merge = dataclasses.replace(replace, on_existing=OnExisting.MERGE)
    result = run_transfer(merge, options=_opts(engine_options, 3))
    assert result.streams == 1  # written in place: one rsync, as before
    assert (final / "Audio Files" / "old take.wav").read_bytes() == b"old"
