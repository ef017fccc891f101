"""A big file split across connections as byte ranges (issue 19): the cut (pure), then
real pushes and pulls through the lab's delaying relay in front of a real sshd (dd at
the far end), content and metadata checked, a move's source deleted only after the
hash check, and a retry that sends only the ranges an earlier attempt did not finish."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from mvp_core.transfer_engine import path, ranges, streams
from mvp_core.transfer_engine.delivery import staging_root
from mvp_core.transfer_engine.direct import run_transfer, split_job
from mvp_core.transfer_engine.endpoints import LocalEndpoint
from mvp_core.transfer_engine.job import TransferJob, TransferMode
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.results import CancelToken, PhaseEvent, Progress
from mvp_core.transfer_engine.ssh_master import ssh_session
from mvp_core.transfer_engine.steps import list_source
from tests.engine.conftest import settled_count
from tests.fixtures.sshd import SshServer
from tests.fixtures.trees import assert_trees_identical, tree_snapshot

MiB = 1024 * 1024


def _covers(pieces: list[ranges.Range], size: int) -> None:
    at = 0
    for piece in sorted(pieces, key=lambda r: r.offset):
        assert piece.offset == at and piece.offset % ranges.BLOCK == 0
        at += piece.length
    assert at == size


@pytest.mark.parametrize(("size", "connections", "cut"), [
    (400 * MiB, 6, 6),
    (400 * MiB + 12345, 6, 6),     # the last range ends at the odd end
    (1024 * MiB, 8, 8),
    (400 * MiB, 8, 8),             # BIG at 100 ms: eight ranges of 50 MiB, one per slot
    (200 * MiB, 8, 6),             # the floor (32 MiB) bounds the cut: six of 33.3 MiB
    (63 * MiB, 8, 0),              # under two floors: whole
    (400 * MiB, 1, 0),             # one slot: nothing is cut
])
def test_the_cut(size: int, connections: int, cut: int) -> None:
    files = [("big.mov", size), ("small.wav", MiB)]
    pieces, whole = ranges.split(files, {"big.mov": "s"}, connections,
                                 min_range=ranges.MIN_RANGE)
    assert len(pieces) == cut
    if cut:
        _covers(pieces, size)
        assert {p.cut for p in pieces} == {cut} and whole == [("small.wav", MiB)]
        assert len({p.mark for p in pieces}) == cut
        # equal parts (to the blocks they start on): run at once, they end together
        assert max(p.length for p in pieces) - min(p.length for p in pieces) < 2 * ranges.BLOCK
    else:
        assert whole == files


@pytest.mark.parametrize(("slots", "cut_each"), [
    (4, 0),    # FEW at 20 ms: four slots, four files of one share each: whole
    (6, 0),    # 1.5 shares: whole still
    (7, 2),    # 1.75 shares: two halves each
    (8, 2),    # FEW at 100 ms: eight halves on eight slots
    (16, 4),
])
def test_files_near_the_fair_share(slots: int, cut_each: int) -> None:
    """FEW (4 x 128 MiB): a file is cut into its number of shares (rounded) of equal
    parts, so every slot has one part of about a share and they end together (measured
    at 100 ms: four whole files left three slots idle, 55 % of the link; eight halves on
    eight connections filled it). A file of one share stays whole."""
    files = [(f"mix{i}.wav", 128 * MiB) for i in range(4)]
    pieces, whole = ranges.split(files, {}, slots, min_range=ranges.MIN_RANGE)
    assert len(pieces) == 4 * cut_each and len(whole) == (4 if cut_each == 0 else 0)
    for rel, size in files if cut_each else []:
        _covers([p for p in pieces if p.rel == rel], size)
    if pieces:
        assert max(p.length for p in pieces) - min(p.length for p in pieces) <= ranges.BLOCK


def test_a_big_file_among_many_small_ones_is_cut() -> None:
    files = [("render.mov", 1024 * MiB), *((f"a{i}.wav", MiB) for i in range(2000))]
    pieces, whole = ranges.split(files, {}, 8, min_range=64 * MiB)
    assert {p.rel for p in pieces} == {"render.mov"} and len(whole) == 2000
    assert len(pieces) == 3  # its fair share of ~3 GiB over 8 slots is 378 MiB: 2.7 shares
    _covers(pieces, 1024 * MiB)
    # Over 4 slots the share is 756 MiB: 1.35 shares, the render stays whole.
    assert ranges.split(files, {}, 4, min_range=64 * MiB)[0] == []


def test_a_changed_file_or_another_cut_has_other_marks() -> None:
    one, _ = ranges.split([("a", 400 * MiB)], {"a": "1/2/3"}, 4, min_range=64 * MiB)
    changed, _ = ranges.split([("a", 400 * MiB)], {"a": "1/9/3"}, 4, min_range=64 * MiB)
    recut, _ = ranges.split([("a", 400 * MiB)], {"a": "1/2/3"}, 5, min_range=64 * MiB)
    again, _ = ranges.split([("a", 400 * MiB)], {"a": "1/2/3"}, 4, min_range=64 * MiB)
    assert [r.mark for r in one] == [r.mark for r in again]
    assert not {r.mark for r in one} & ({r.mark for r in changed} | {r.mark for r in recut})


@pytest.fixture
def small_cuts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test files are a few MiB: cut them at the block (1 MiB) and measure their path."""
    monkeypatch.setattr(streams, "MIN_STREAM_BYTES", 1)
    monkeypatch.setattr(ranges, "MIN_RANGE", 1)
    monkeypatch.setattr(path, "PROBE_MIN_BYTES", 1)


def _session(parent: Path) -> Path:
    """A big render (odd size, read-only mode, old mtime) beside a few small files."""
    root = parent / "-render 'v2' $(x)"
    (root / "renders").mkdir(parents=True)
    big = root / "renders" / "final mix.mov"
    big.write_bytes(os.urandom(5 * MiB + 4321))
    os.chmod(big, 0o440)
    os.utime(big, ns=(1_000_000_000_123_456_789, 1_000_000_000_123_456_789))
    for i in range(4):
        (root / f"note {i}.txt").write_bytes(os.urandom(3000 + i))
    (root / "empty").mkdir()
    return root


def _send(events: list[PhaseEvent]) -> PhaseEvent:
    [done] = [e for e in events if e.phase == "send" and e.status == "done"]
    return done


def _options(engine_options: EngineOptions, **more: object) -> EngineOptions:
    return dataclasses.replace(engine_options, ssh_max_connections=3, direct_streams=1,
                               **more)  # type: ignore[arg-type]


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_a_big_file_goes_as_ranges_over_separate_connections(
        tmp_path: Path, far_sshd: SshServer, engine_options: EngineOptions,
        small_cuts: None, direction: str, monkeypatch: pytest.MonkeyPatch) -> None:
    looked: list[object] = []
    real_done_marks = ranges.done_marks
    monkeypatch.setattr(ranges, "done_marks", lambda *a: looked.append(a) or real_done_marks(*a))
    src = _session(tmp_path / "src")
    reference = tree_snapshot(src)
    here = tmp_path / "here"
    job = (TransferJob(LocalEndpoint(src), far_sshd.endpoint(here), TransferMode.MOVE)
           if direction == "push" else
           TransferJob(far_sshd.endpoint(src), LocalEndpoint(here), TransferMode.MOVE))
    before = settled_count(far_sshd)
    events: list[PhaseEvent] = []
    seen: list[Progress] = []
    # verify=size asked: a file sent as ranges is hashed on both sides all the same.
    result = run_transfer(job, options=_options(engine_options, verify="size"),
                          on_phase=events.append, progress=seen.append)
    made = settled_count(far_sshd) - before
    send = _send(events)
    assert send.details["ranges"] == 3 and send.details["ranges_resumed"] == 0
    assert send.details["range_files"] == 1
    assert send.details["final_pass_bytes"] == 0  # the ranges carried the big file
    # Nothing was staged before: no round trip to look for an earlier attempt's ranges.
    assert looked == []
    # At most 3 at once; each range and each rsync stream of the small files opens its own.
    assert result.connections == 3
    # One connection per slot, each opened once and reused for every range and stream it
    # carries (an ssh handshake is several round trips on a long link).
    assert 3 + len(send.details["stream_files"]) > 3  # more to carry than slots
    assert made == 1 + 3
    assert result.algorithm is not None  # content-checked, not sizes only
    verify = [e for e in events if e.phase == "verify" and e.status == "done"]
    assert verify and verify[0].details["content"] == "checksum"
    done = [p.bytes_done for p in seen]
    assert done == sorted(done) and done[-1] == result.bytes_transferred
    # Content, mode and the exact mtime (ns) of the big file, and the rest of the tree.
    assert tree_snapshot(here / src.name) == reference
    big = here / src.name / "renders" / "final mix.mov"
    assert big.stat().st_mtime_ns == 1_000_000_000_123_456_789
    assert big.stat().st_mode & 0o777 == 0o440
    assert not src.exists()  # a move: deleted after the check
    assert not (here / f".ketter-{job.job_id}").exists()


def _counting_rsync(tmp_path: Path) -> tuple[str, Path]:
    """A remote rsync_path that logs each transfer it serves (one line; the capability
    probe's ``--version`` is not one) and execs the real rsync."""
    log = tmp_path / "rsync-runs.log"
    wrapper = tmp_path / "counting-rsync"
    wrapper.write_text(f'#!/bin/sh\ncase " $* " in *" --server "*) echo run >> "{log}" ;; esac\n'
                       'exec rsync "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper), log


def test_a_single_big_file_job(tmp_path: Path, far_sshd: SshServer,
                               engine_options: EngineOptions, small_cuts: None) -> None:
    one = tmp_path / "one.mov"
    one.write_bytes(os.urandom(4 * MiB + 512 * 1024 + 7))
    os.chmod(one, 0o604)
    os.utime(one, ns=(1_000_000_000_123_456_789, 1_000_000_000_123_456_789))
    wrapper, runs = _counting_rsync(tmp_path)
    target = dataclasses.replace(far_sshd.endpoint(tmp_path / "t"), rsync_path=wrapper)
    events: list[PhaseEvent] = []
    result = run_transfer(TransferJob(LocalEndpoint(one), target),
                          options=_options(engine_options), on_phase=events.append)
    assert _send(events).details["ranges"] == 3 and result.files_transferred == 1
    # After the ranges, no rsync at all: one command gives the file its mode and mtime
    # (an rsync pass costs several round trips on a long link).
    assert not runs.exists()
    assert (tmp_path / "t" / "one.mov").read_bytes() == one.read_bytes()
    assert (tmp_path / "t" / "one.mov").stat().st_mtime_ns == one.stat().st_mtime_ns
    assert (tmp_path / "t" / "one.mov").stat().st_mode & 0o7777 == 0o604


def test_a_folder_of_big_files_only_gets_its_attributes_without_rsync(
        tmp_path: Path, far_sshd: SshServer, engine_options: EngineOptions,
        small_cuts: None) -> None:
    """Every file of the folder came as ranges into a new staging tree: what is left is
    modes and times (and an empty folder), one remote command instead of the final
    rsync pass (~8 round trips: 0.8 s at 100 ms, measured on BIG and FEW)."""
    old = 1_000_000_000_123_456_789
    src = tmp_path / "src" / "Sessão Final"
    (src / "stems").mkdir(parents=True)
    (src / "empty").mkdir()
    for name, mode in (("stems/drums.wav", 0o440), ("mix.wav", 0o604)):
        (src / name).write_bytes(os.urandom(4 * MiB + 99))
        os.chmod(src / name, mode)
        os.utime(src / name, ns=(old, old))
    for folder, mode in (("stems", 0o750), ("empty", 0o700), ("", 0o755)):
        os.chmod(src / folder, mode)
        os.utime(src / folder, ns=(old + 10**9, old + 10**9))
    reference = tree_snapshot(src)
    wrapper, runs = _counting_rsync(tmp_path)
    target = dataclasses.replace(far_sshd.endpoint(tmp_path / "t"), rsync_path=wrapper)
    events: list[PhaseEvent] = []
    options = dataclasses.replace(_options(engine_options), ssh_max_connections=4)
    result = run_transfer(TransferJob(LocalEndpoint(src), target),
                          options=options, on_phase=events.append)
    send = _send(events)  # two halves each: four ranges on four connections
    assert send.details["range_files"] == 2 and send.details["ranges"] == 4
    assert result.files_transferred == 2
    assert not runs.exists()  # no rsync at all
    got = tmp_path / "t" / src.name
    assert tree_snapshot(got) == reference
    assert (got / "mix.wav").stat().st_mtime_ns == old


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_a_retry_sends_only_the_ranges_not_finished(
        tmp_path: Path, far_sshd: SshServer, engine_options: EngineOptions,
        small_cuts: None, direction: str) -> None:
    """An earlier attempt finished range 0 (sent with the engine's own ``send_range``,
    its marker left in the job's staging root) and then died: the job resumes."""
    src = _session(tmp_path / "src")
    here = tmp_path / "here"
    job = (TransferJob(LocalEndpoint(src), far_sshd.endpoint(here), job_id="resume-me")
           if direction == "push" else
           TransferJob(far_sshd.endpoint(src), LocalEndpoint(here), job_id="resume-me"))
    options = _options(engine_options)
    root = staging_root(job)
    staged = dataclasses.replace(root, path=type(root.path)(str(root.path)) / src.name)  # type: ignore[call-arg]
    remote = job.target if direction == "push" else job.source
    with ssh_session(remote, options) as session:  # type: ignore[arg-type]
        # The cut the job will make, from the listing the job makes.
        pieces = split_job(job, list_source(job, session), session, 3)
        assert len(pieces) == 3
        ranges.send_range(pieces[0], job.source, staged, root, session,
                          cancel=CancelToken(), report=lambda _n: None)
    assert (Path(str(root.path)) / ranges.RANGE_MARKS / pieces[0].mark).exists()
    before = settled_count(far_sshd)
    events: list[PhaseEvent] = []
    run_transfer(job, options=options, on_phase=events.append)
    made = settled_count(far_sshd) - before
    send = _send(events)
    assert send.details["ranges"] == 3 and send.details["ranges_resumed"] == 1
    # The master and one connection per slot (3), each reused for what it carries.
    assert made == 1 + min(3, 2 + len(send.details["stream_files"]))
    assert_trees_identical(src, here / src.name)
    assert not Path(str(root.path)).exists()


def test_a_lan_or_a_bandwidth_limit_never_cuts(tmp_path: Path, logged_sshd: SshServer,
                                               far_sshd: SshServer,
                                               engine_options: EngineOptions,
                                               small_cuts: None) -> None:
    src = _session(tmp_path / "src")
    for name, server, more in (("lan", logged_sshd, {}),
                               ("limited", far_sshd, {"bwlimit_kib_s": 100_000})):
        events: list[PhaseEvent] = []
        run_transfer(TransferJob(LocalEndpoint(src), server.endpoint(tmp_path / name)),
                     options=_options(engine_options, **more), on_phase=events.append)
        assert "ranges" not in _send(events).details
        assert_trees_identical(src, tmp_path / name / src.name)
