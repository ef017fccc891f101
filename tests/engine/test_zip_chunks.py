"""Chunked, pipelined ZIP_FIRST: the split (pure), then real runs over the loopback sshd.

Small chunks (64 KiB) on a ~1 MiB tree give a dozen and more chunks, so the pipeline,
its temp-space bound, its failure/cancel paths and the per-chunk resume all run for
real (zip, rsync, ssh, unzip; nothing mocked).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mvp_core.transfer_engine.chunks import ENTRY_OVERHEAD, plan_chunks
from mvp_core.transfer_engine.delivery import CHUNK_MARKS, staging_name
from mvp_core.transfer_engine.endpoints import LocalEndpoint
from mvp_core.transfer_engine.errors import (
    CommandFailedError,
    TransferCancelledError,
)
from mvp_core.transfer_engine.execute import cleanup_job_temp, execute_plan
from mvp_core.transfer_engine.job import OnExisting, TransferJob, TransferMode
from mvp_core.transfer_engine.manifest import DIR, FILE, Manifest, ManifestEntry, build_manifest
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.planner import TransferStrategy, decide_strategy
from mvp_core.transfer_engine.results import CancelToken, PhaseEvent, Progress
from mvp_core.transfer_engine.zip_first import (
    chunk_zip_name,
    send_streams,
    temp_slots,
    zip_name,
)
from tests.engine.conftest import temp_leftovers
from tests.fixtures.sshd import SshServer
from tests.fixtures.system import is_below, process_table
from tests.fixtures.trees import (
    assert_trees_identical,
    make_hostile_tree,
    make_session_tree,
    tree_snapshot,
)

ZIP = TransferStrategy.ZIP_FIRST
CHUNK = 64 * 1024
# A chunk's zip is its content plus headers (well under 32 KiB here).
ZIP_MAX = CHUNK + 32 * 1024
# The bound, 3 chunks per side, with two sends at once (the default): locally
# the zip being built and the two being sent; remotely the two being received and the
# one being extracted. With one send at a time: 2 per side, as before.
BOUND = 3 * ZIP_MAX


# ---------------------------------------------------------------- the split (pure)


def _entry(rel: str, size: int, kind: str = FILE, mtime: int = 1) -> ManifestEntry:
    return ManifestEntry(rel, kind, size if kind == FILE else 0, 0o755 if kind == DIR else 0o644,
                         mtime * 10**9)


def _manifest(*entries: ManifestEntry) -> Manifest:
    return Manifest(Path("/nowhere"), True, tuple(sorted(entries, key=lambda e: e.rel_path)))


def test_a_tree_under_one_chunk_is_one_zip_of_every_entry() -> None:
    m = _manifest(_entry("a", 0, DIR), _entry("a/x", 100), _entry("b", 50), _entry("empty", 0, DIR))
    plan = plan_chunks(m, 10_000)
    assert len(plan) == 1 and not plan.chunked
    assert plan.chunks[0].entries == m.entries  # exactly the single zip of before
    assert plan.chunks[0].has_root


def test_chunks_hold_whole_files_in_order_and_directories_in_the_last() -> None:
    files = [_entry(f"d{i // 7}/f{i:03d}", 1000 + 13 * i) for i in range(60)]
    dirs = [_entry(f"d{j}", 0, DIR) for j in range(9)] + [_entry("empty", 0, DIR)]
    big = _entry("d3/huge", 50_000)
    m = _manifest(*files, *dirs, big)
    plan = plan_chunks(m, 8_000)
    assert plan.chunked
    got = [e for c in plan.chunks for e in c.entries if e.kind == FILE]
    assert got == [e for e in m.entries if e.kind == FILE]  # each file once, in path order
    for chunk in plan.chunks:
        weight = sum(e.size + ENTRY_OVERHEAD for e in chunk.entries if e.kind == FILE)
        assert weight <= 8_000 or [e.rel_path for e in chunk.entries if e.kind == FILE] \
            == ["d3/huge"]  # only a file bigger than a chunk makes a bigger chunk, alone
        assert chunk.has_root == (chunk is plan.chunks[-1])
        assert all(e.kind == FILE for e in chunk.entries) or chunk is plan.chunks[-1]
    assert [e for e in plan.chunks[-1].entries if e.kind == DIR] == [
        e for e in m.entries if e.kind == DIR]
    assert [c.index for c in plan.chunks] == list(range(len(plan)))


def test_the_plan_is_deterministic_and_its_digest_follows_the_tree() -> None:
    entries = [_entry(f"f{i}", 3000) for i in range(10)]
    a = plan_chunks(_manifest(*entries), 7000, root_name="S")
    b = plan_chunks(_manifest(*reversed(entries)), 7000, root_name="S")
    assert a == b
    touched = [*entries[:4], _entry("f4", 3000, mtime=2), *entries[5:]]
    assert plan_chunks(_manifest(*touched), 7000, root_name="S").digest != a.digest
    assert plan_chunks(_manifest(*entries), 13000, root_name="S").digest != a.digest  # other split
    assert plan_chunks(_manifest(*entries), 7000, root_name="T").digest != a.digest
    with pytest.raises(ValueError):
        plan_chunks(_manifest(*entries), 0)


def test_only_a_directory_tree_is_one_chunk() -> None:
    plan = plan_chunks(_manifest(_entry("a", 0, DIR), _entry("a/b", 0, DIR)), 10)
    assert len(plan) == 1 and plan.chunks[0].has_root


def test_a_file_bigger_than_a_chunk_is_sent_as_is() -> None:
    """Its chunk holds it alone and is flagged as is (no zip); when it is the last file,
    the directories get a zip of their own; a tree of one such file is chunked too."""
    small = [_entry(f"a/f{i}", 1000) for i in range(6)]
    dirs = [_entry(d, 0, DIR) for d in ("a", "b", "z")]
    m = _manifest(*small, _entry("b/render.mov", 20_000), _entry("z/stem.wav", 30_000), *dirs)
    plan = plan_chunks(m, 4000)
    assert [[e.rel_path for e in c.entries] for c in plan.chunks if c.as_is] == [
        ["b/render.mov"], ["z/stem.wav"]]
    last = plan.chunks[-1]
    assert not last.as_is and last.has_root and list(last.entries) == dirs
    assert [e for c in plan.chunks for e in c.entries if e.kind == FILE] == [
        e for e in m.entries if e.kind == FILE]
    alone = plan_chunks(_manifest(_entry("only.wav", 9000)), 4000)
    assert [c.as_is for c in alone.chunks] == [True, False] and alone.chunked
    # The same files under a bigger chunk size: nothing as is, another plan.
    roomy = plan_chunks(m, 64_000)
    assert not any(c.as_is for c in roomy.chunks) and roomy.digest != plan.digest


def test_chunk_zip_names_are_the_single_name_or_numbered() -> None:
    assert chunk_zip_name("job 7", 0, 1) == zip_name("job 7") == "ketter-job_7.zip"
    assert chunk_zip_name("job 7", 3, 12) == "ketter-job_7+00003.zip"


# ---------------------------------------------------------------- real runs


def _tree(parent: Path) -> Path:
    """~1 MiB: a session (nested dirs, an empty dir, an exec bit) plus hostile names and
    a read-only directory with files in it; fixed mtimes everywhere, dirs last."""
    root = make_session_tree(parent, n_audio=28, audio_size=36 * 1024)
    make_hostile_tree(root, name="hostile $x 'q'")
    ro = root / "Locked Stems"
    ro.mkdir()
    for i in range(4):
        (ro / f"stem {i}.wav").write_bytes(bytes([i]) * (20 * 1024))
        os.utime(ro / f"stem {i}.wav", (1_000_000_000 + i, 1_000_000_000 + i))
    os.chmod(ro, 0o555)
    for d, _subdirs, _files in sorted(os.walk(root), key=lambda w: -w[0].count(os.sep)):
        os.utime(d, (1_100_000_000, 1_100_000_000))
    return root


@pytest.fixture
def chunked(engine_options: EngineOptions) -> EngineOptions:
    """Chunks of 64 KiB; the default streams (4), so every test here sends two chunks
    at once."""
    options = dataclasses.replace(engine_options, zip_chunk_bytes=CHUNK, direct_streams=4)
    assert send_streams(options) == 2
    assert temp_slots(options, remote_target=True) * ZIP_MAX == BOUND
    return options


def test_send_streams_follow_direct_streams_up_to_two() -> None:
    assert [send_streams(EngineOptions(direct_streams=n)) for n in (0, 1, 2, 3, 8)] == [
        1, 1, 2, 2, 2]
    assert temp_slots(EngineOptions(direct_streams=1), remote_target=True) == 2
    assert temp_slots(EngineOptions(direct_streams=4), remote_target=True) == 3
    assert temp_slots(EngineOptions(direct_streams=4), remote_target=False) == 2


@pytest.fixture
def src(tmp_path: Path) -> Iterator[Path]:
    root = _tree(tmp_path / "src")
    yield root
    for locked in (root / "Locked Stems", root.parent.parent / "out" / root.name / "Locked Stems"):
        if locked.exists():
            os.chmod(locked, 0o755)  # let pytest remove it


def _done(events: list[PhaseEvent], phase: str) -> list[int]:
    return [e.details["chunk"] for e in events if e.phase == phase and e.status == "done"]


def _cleanup_details(events: list[PhaseEvent]) -> dict[str, object]:
    return [e.details for e in events if e.phase == "cleanup"][-1]


def _index(events: list[PhaseEvent], phase: str, status: str, chunk: int) -> int:
    return next(i for i, e in enumerate(events)
                if (e.phase, e.status, e.details.get("chunk")) == (phase, status, chunk))


def _most_at_once(events: list[PhaseEvent], phase: str) -> int:
    """Most ``phase`` runs in progress at once, from the event timeline."""
    running = most = 0
    for e in events:
        if e.phase == phase:
            running += 1 if e.status == "started" else -1
            most = max(most, running)
    assert running == 0
    return most


class _RsyncSampler:
    """Counts, every few ms, the zips that rsync processes are sending at once."""

    def __init__(self, options: EngineOptions) -> None:
        self.prefix = str(options.temp_dir).encode() + b"/"
        self.peak = 0
        self.seen: set[bytes] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            zips = []
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if argv[0] == b"rsync":
                    zips += [a for a in argv if a.startswith(self.prefix) and a.endswith(b".zip")]
            # Distinct zips: rsync's fork of its ssh carries its argv until the exec.
            self.seen.update(zips)
            self.peak = max(self.peak, len(set(zips)))
            time.sleep(0.005)

    def __enter__(self) -> _RsyncSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class _TempSampler:
    """Measures, every few ms, the bytes actually in the local and "remote" temp dirs."""

    def __init__(self, options: EngineOptions) -> None:
        self.dirs = (Path(options.temp_dir), Path(options.remote_temp_dir))
        self.peaks = [0, 0]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for i, d in enumerate(self.dirs):
                total = 0
                try:
                    for entry in os.scandir(d):
                        try:
                            total += entry.stat(follow_symlinks=False).st_size
                        except OSError:
                            pass
                except OSError:
                    pass
                self.peaks[i] = max(self.peaks[i], total)
            time.sleep(0.002)

    def __enter__(self) -> _TempSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _processes_of(tmp_path: Path, sshd: SshServer | None) -> list[str]:
    """Live processes (here, or below the sshd fixture) that belong to this test."""
    table = process_table()
    root = sshd.process.pid if sshd is not None and sshd.process is not None else -1
    return [f"{p.pid}: {p.cmdline}" for p in table.values()
            if p.pid != os.getpid() and (str(tmp_path) in p.cmdline or (
                is_below(table, p.pid, root) and any(t in p.cmdline for t in ("rsync", "unzip"))))]


def _assert_no_processes(tmp_path: Path, sshd: SshServer | None) -> None:
    deadline = time.monotonic() + 10
    while (left := _processes_of(tmp_path, sshd)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == []


@pytest.mark.parametrize(("where", "streams"), [("ssh", 2), ("ssh", 1), ("local", 2)])
def test_many_chunks_deliver_an_identical_tree_within_bounded_temp_space(
        tmp_path: Path, sshd: SshServer, chunked: EngineOptions, src: Path, where: str,
        streams: int) -> None:
    reference = tree_snapshot(src)
    out = tmp_path / "out"
    target = sshd.endpoint(out) if where == "ssh" else LocalEndpoint(out)
    job = TransferJob(LocalEndpoint(src), target, TransferMode.MOVE, job_id="chunky")
    plan = decide_strategy(job, force=ZIP)
    n = len(plan_chunks(plan.manifest or build_manifest(src), CHUNK, root_name=src.name))
    assert n >= 12
    events: list[PhaseEvent] = []
    progress: list[Progress] = []
    # Slow sends (ssh, a limit per rsync) so that zip, sends and unzip really overlap.
    options = dataclasses.replace(chunked, bwlimit_kib_s=1024 if where == "ssh" else 0,
                                  direct_streams=streams)
    bound = temp_slots(options, remote_target=where == "ssh") * ZIP_MAX
    assert bound <= BOUND
    with _TempSampler(chunked) as sampler, _RsyncSampler(chunked) as senders:
        result = execute_plan(plan, options=options, on_phase=events.append,
                              progress=progress.append)

    assert tree_snapshot(out / src.name) == reference  # modes, mtimes, dirs, names
    assert not src.exists()
    assert sorted(os.listdir(out)) == [src.name]  # staging and chunk markers gone
    assert temp_leftovers(chunked) == []
    assert result.files_transferred == plan.n_files
    assert sorted(_done(events, "zip")) == sorted(_done(events, "unzip")) == list(range(n))
    if where == "ssh":
        assert sorted(_done(events, "send")) == list(range(n))
        # `streams` sends at once, never more: in the timeline, in the rsync processes
        # actually running (each sending its own chunk), in the summary.
        assert _most_at_once(events, "send") == streams
        assert senders.peak == streams and len(senders.seen) == n
        assert _cleanup_details(events)["peak_sends"] == streams
        assert _cleanup_details(events)["send_streams"] == streams
        # Extraction stays in chunk order whatever order the sends end in.
        assert _done(events, "unzip") == list(range(n))
        # The pipeline overlaps: some chunk was built, and another extracted, while a
        # chunk was on the wire.
        assert any(_index(events, "zip", "started", k + 1) < _index(events, "send", "done", k)
                   for k in range(n - 1))
        assert any(_index(events, "unzip", "started", k - 1) < _index(events, "send", "done", k)
                   for k in range(1, n))
    else:
        assert _done(events, "send") == []
    phases = [e.phase for e in events if e.status == "done"]
    assert phases[-6:] == ["restore_directories", "cleanup", "verify", "deliver", "flush",
                           "delete_source"]
    assert set(result.phase_timings) >= {"zip", "unzip", "cleanup", "verify"}

    details = _cleanup_details(events)
    assert details["chunks"] == n and details["chunks_resumed"] == 0
    peak_local, peak_remote = details["peak_local_temp_bytes"], details["peak_remote_temp_bytes"]
    assert isinstance(peak_local, int) and isinstance(peak_remote, int)
    assert CHUNK // 2 < peak_local <= bound
    assert sampler.peaks[0] <= bound
    if where == "ssh":
        assert CHUNK // 2 < peak_remote <= bound
        assert 0 < sampler.peaks[1] <= bound
        sends = sum(e.duration_s or 0.0 for e in events
                    if (e.phase, e.status) == ("send", "done"))
        busy = details["send_busy_s"]
        assert isinstance(busy, float) and 0 < busy
        if streams == 2:
            assert busy < sends * 0.9  # the sends overlapped in wall time
    else:
        assert peak_remote == 0
    # One job-wide progress figure that only rises, to the end of the last stage.
    fractions = [("zip", "send", "unzip").index(p.phase) + p.bytes_done / p.bytes_total
                 for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(3.0)
    _assert_no_processes(tmp_path, sshd)


def test_a_failed_chunk_stops_the_pipeline_and_leaves_no_temp_zip(
        tmp_path: Path, sshd: SshServer, chunked: EngineOptions, src: Path) -> None:
    """A chunk's zip is damaged on the target host: its unzip fails, the other stages
    stop, the temp zips go on both sides, and that unzip's error is the one raised."""
    reference = tree_snapshot(src)
    out = tmp_path / "out"
    job = TransferJob(LocalEndpoint(src), sshd.endpoint(out), TransferMode.MOVE, job_id="bad")
    events: list[PhaseEvent] = []

    def damage(e: PhaseEvent) -> None:
        events.append(e)
        if (e.phase, e.status, e.details.get("chunk")) == ("send", "done", 4):
            sent = Path(chunked.remote_temp_dir) / chunk_zip_name("bad", 4, e.details["chunks"],
                                                                  remote=True)
            sent.write_bytes(sent.read_bytes()[:1000])

    with pytest.raises(CommandFailedError, match="unzip") as info:
        execute_plan(decide_strategy(job, force=ZIP), options=chunked, on_phase=damage)
    assert "unzip" in " ".join(info.value.argv)
    assert ("unzip", "failed", 4) in [(e.phase, e.status, e.details.get("chunk"))
                                      for e in events]
    assert ("cleanup", "done") in [(e.phase, e.status) for e in events]
    assert temp_leftovers(chunked) == []
    assert tree_snapshot(src) == reference  # a failed move deletes nothing
    assert not (out / src.name).exists()
    _assert_no_processes(tmp_path, sshd)


@pytest.mark.parametrize("stage", ["zip", "send", "unzip"])
def test_cancel_mid_pipeline_stops_everything_and_cleans_both_sides(
        tmp_path: Path, sshd: SshServer, chunked: EngineOptions, src: Path,
        stage: str) -> None:
    reference = tree_snapshot(src)
    out = tmp_path / "out"
    job = TransferJob(LocalEndpoint(src), sshd.endpoint(out), TransferMode.MOVE, job_id="stop")
    cancel = CancelToken()
    events: list[PhaseEvent] = []

    def on_phase(e: PhaseEvent) -> None:
        events.append(e)
        if (e.phase, e.status, e.details.get("chunk")) == (stage, "started", 3):
            cancel.cancel()

    started = time.monotonic()
    with pytest.raises(TransferCancelledError):
        execute_plan(decide_strategy(job, force=ZIP),
                     options=dataclasses.replace(chunked, bwlimit_kib_s=256),
                     cancel=cancel, on_phase=on_phase)
    assert time.monotonic() - started < 20
    assert (stage, "failed", 3) in [(e.phase, e.status, e.details.get("chunk")) for e in events]
    assert temp_leftovers(chunked) == []
    assert tree_snapshot(src) == reference
    assert os.listdir(out) == []  # a cancel discards the staging dir, markers included
    _assert_no_processes(tmp_path, sshd)


def _kill_rsync_of(zip_file: str, killed: list[int]) -> None:
    """SIGTERM the rsync sending ``zip_file`` (this test's own child): rsync exits 20, a
    transient failure, like a link that dropped."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0] == b"rsync" and any(a.endswith(zip_file.encode()) for a in argv):
                os.kill(int(pid), signal.SIGTERM)
                killed.append(int(pid))
                return
        time.sleep(0.01)


def test_a_retry_resumes_from_the_first_chunk_not_extracted(
        tmp_path: Path, sshd: SshServer, chunked: EngineOptions, src: Path) -> None:
    """One send fails (its rsync killed: a link that dropped) while another chunk's send
    is in flight: that one is stopped too, the failure is the error raised, and the
    retry sends exactly the chunks not extracted."""
    reference = tree_snapshot(src)
    out = tmp_path / "out"
    job = TransferJob(LocalEndpoint(src), sshd.endpoint(out), TransferMode.MOVE, job_id="again")
    plan = decide_strategy(job, force=ZIP)
    # About 1.4 s per chunk's send (36 KiB here): a send that started under 0.6 s ago,
    # and the one starting, are surely still running when the kill lands.
    slow = dataclasses.replace(chunked, bwlimit_kib_s=32)
    first: list[PhaseEvent] = []
    killed: list[int] = []
    running: dict[int, float] = {}  # chunk -> when its send started
    struck: list[tuple[int, int]] = []  # (chunk whose rsync is killed, its sibling)

    def on_phase(e: PhaseEvent) -> None:
        first.append(e)
        if e.phase != "send":
            return
        chunk, now = e.details["chunk"], time.monotonic()
        if e.status != "started":
            running.pop(chunk, None)
            return
        young = [k for k, t in running.items() if now - t < 0.6]
        if chunk >= 7 and young and not struck:
            struck.append((young[0], chunk))
            name = chunk_zip_name("again", young[0], e.details["chunks"])
            threading.Thread(target=_kill_rsync_of, args=(name, killed), daemon=True).start()
        running[chunk] = now

    with pytest.raises(CommandFailedError) as info:
        execute_plan(plan, options=slow, on_phase=on_phase)
    assert killed and info.value.transient  # the killed rsync's error, not the stop
    victim, sibling = struck[0]
    statuses = {(e.status, e.details.get("chunk")) for e in first if e.phase == "send"}
    assert ("failed", victim) in statuses
    assert ("failed", sibling) in statuses, [  # stopped with it, never finished
        (e.status, e.details.get("chunk"), e.duration_s) for e in first if e.phase == "send"]
    extracted = set(_done(first, "unzip"))
    assert extracted == set(range(len(extracted)))  # in order: a prefix of the chunks
    assert extracted and max(extracted) < victim
    assert temp_leftovers(chunked) == []
    staged = out / staging_name("again")
    assert len(os.listdir(staged / CHUNK_MARKS)) == len(extracted)  # kept for the retry
    _assert_no_processes(tmp_path, sshd)

    second: list[PhaseEvent] = []
    result = execute_plan(decide_strategy(job, force=ZIP), options=chunked,
                          on_phase=second.append)
    n = _cleanup_details(second)["chunks"]
    assert isinstance(n, int)
    assert set(_done(second, "send")) == set(range(n)) - extracted  # nothing sent twice
    assert set(_done(second, "zip")) == set(range(n)) - extracted
    assert _cleanup_details(second)["chunks_resumed"] == len(extracted)
    assert tree_snapshot(out / src.name) == reference  # dir modes and mtimes included
    assert sorted(os.listdir(out)) == [src.name]
    assert result.files_transferred == plan.n_files
    assert temp_leftovers(chunked) == []
    assert not src.exists()


BIG = 5 * CHUNK  # well over the temp bound: a zip of it could not hide under BOUND


def _with_big_files(root: Path) -> list[str]:
    """Two files bigger than a chunk: one mid-tree, one the last file in path order."""
    os.chmod(root / "Locked Stems", 0o755)
    made = []
    for rel in ("Bounces/Mix v2 (final).wav", "zz Render 'final'.mov"):
        path = root / rel
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(os.urandom(BIG))
        os.utime(path, (1_000_000_500, 1_000_000_500))
        made.append(rel)
    os.chmod(root / "Locked Stems", 0o555)
    for d in (root, root / "Bounces"):
        os.utime(d, (1_100_000_000, 1_100_000_000))
    return made


@pytest.mark.parametrize("where", ["ssh", "local"])
def test_big_files_go_as_is_without_a_zip_or_temp_space(
        tmp_path: Path, sshd: SshServer, chunked: EngineOptions, src: Path, where: str) -> None:
    big = _with_big_files(src)
    reference = tree_snapshot(src)
    out = tmp_path / "out"
    target = sshd.endpoint(out) if where == "ssh" else LocalEndpoint(out)
    job = TransferJob(LocalEndpoint(src), target, TransferMode.MOVE, job_id="as-is")
    plan = decide_strategy(job, force=ZIP)
    chunks = plan_chunks(plan.manifest or build_manifest(src), CHUNK, root_name=src.name)
    as_is = [c.index for c in chunks.chunks if c.as_is]
    assert [chunks.chunks[i].entries[0].rel_path for i in as_is] == big
    events: list[PhaseEvent] = []
    with _TempSampler(chunked) as sampler:
        result = execute_plan(plan, options=chunked, on_phase=events.append)
    assert tree_snapshot(out / src.name) == reference
    assert not src.exists() and sorted(os.listdir(out)) == [src.name]
    assert result.files_transferred == plan.n_files
    assert temp_leftovers(chunked) == []  # lists gone with the zips
    n = len(chunks)
    assert sorted(_done(events, "zip")) == sorted(_done(events, "unzip")) == sorted(
        set(range(n)) - set(as_is))
    sends = {e.details["chunk"]: e.details["as_is"] for e in events
             if (e.phase, e.status) == ("send", "done")}
    assert {k for k, flag in sends.items() if flag} == set(as_is)
    if where == "ssh":
        assert set(sends) == set(range(n))
    details = _cleanup_details(events)
    peak_local, peak_remote = details["peak_local_temp_bytes"], details["peak_remote_temp_bytes"]
    assert isinstance(peak_local, int) and isinstance(peak_remote, int)
    assert peak_local <= BOUND < BIG and peak_remote <= BOUND
    assert sampler.peaks[0] <= BOUND and sampler.peaks[1] <= BOUND
    _assert_no_processes(tmp_path, sshd)


def test_a_killed_as_is_send_resumes_on_retry(tmp_path: Path, sshd: SshServer,
                                              chunked: EngineOptions, src: Path) -> None:
    """The big file's rsync killed mid-way (a dropped link): a transient failure; the
    retry sends only what no marker covers and delivers the identical tree."""
    _with_big_files(src)
    reference = tree_snapshot(src)
    out = tmp_path / "out"
    job = TransferJob(LocalEndpoint(src), sshd.endpoint(out), TransferMode.MOVE,
                      job_id="big-again")
    killed: list[int] = []
    struck: list[str] = []
    first: list[PhaseEvent] = []

    def on_phase(e: PhaseEvent) -> None:
        first.append(e)
        if (e.phase, e.status) == ("send", "started") and e.details["as_is"] and not struck:
            name = chunk_zip_name("big-again", e.details["chunk"], e.details["chunks"])
            listed = name.removesuffix(".zip") + ".files"
            struck.append(listed)

            def strike() -> None:
                # Once rsync is well under way (~5 s for this file at 64 KiB/s): killed
                # before it sets its signal handlers, it dies of the signal itself (no
                # rsync exit code: not what a dropped link looks like).
                time.sleep(0.5)
                _kill_rsync_of(listed, killed)

            threading.Thread(target=strike, daemon=True).start()

    with pytest.raises(CommandFailedError) as info:
        execute_plan(decide_strategy(job, force=ZIP),
                     options=dataclasses.replace(chunked, bwlimit_kib_s=64), on_phase=on_phase)
    assert killed and info.value.transient
    assert temp_leftovers(chunked) == []
    marked = os.listdir(out / staging_name("big-again") / CHUNK_MARKS)
    second: list[PhaseEvent] = []
    execute_plan(decide_strategy(job, force=ZIP), options=chunked, on_phase=second.append)
    n = _cleanup_details(second)["chunks"]
    assert isinstance(n, int)
    assert _cleanup_details(second)["chunks_resumed"] == len(marked)
    assert len(_done(second, "send")) == n - len(marked)
    assert tree_snapshot(out / src.name) == reference
    assert sorted(os.listdir(out)) == [src.name]
    _assert_no_processes(tmp_path, sshd)


def test_a_changed_source_starts_over(tmp_path: Path, sshd: SshServer,
                                      chunked: EngineOptions, src: Path) -> None:
    out = tmp_path / "out"
    job = TransferJob(LocalEndpoint(src), sshd.endpoint(out), job_id="changed")
    cancel = CancelToken()

    def on_phase(e: PhaseEvent) -> None:
        if (e.phase, e.status, e.details.get("chunk")) == ("unzip", "done", 2):
            cancel.cancel()

    # A cancel discards the staging; a transient failure keeps it: simulate that by
    # leaving markers of an older plan, as a kill -9 of the worker would.
    with pytest.raises(TransferCancelledError):
        execute_plan(decide_strategy(job, force=ZIP), options=chunked, cancel=cancel,
                     on_phase=on_phase)
    marks = out / staging_name("changed") / CHUNK_MARKS
    marks.mkdir(parents=True)
    (marks / "0123456789abcdef-00000").touch()
    stale = out / staging_name("changed") / src.name / "stale.wav"
    stale.parent.mkdir()
    stale.write_bytes(b"from an older source")
    take = src / "Audio Files" / "Kick_0003.wav"
    take.write_bytes(b"re-recorded")
    reference = tree_snapshot(src)
    events: list[PhaseEvent] = []
    execute_plan(decide_strategy(job, force=ZIP), options=chunked, on_phase=events.append)
    assert _cleanup_details(events)["chunks_resumed"] == 0
    n = _cleanup_details(events)["chunks"]
    assert sorted(_done(events, "unzip")) == list(range(n))  # type: ignore[arg-type]
    assert tree_snapshot(out / src.name) == reference  # the stale file is not delivered


def test_cleanup_job_temp_finds_every_chunk_zip(tmp_path: Path, sshd: SshServer,
                                                engine_options: EngineOptions) -> None:
    """After a crash: every chunk zip of the job, and rsync temps of them, on both sides."""
    job = TransferJob(LocalEndpoint(tmp_path / "s"), sshd.endpoint(tmp_path / "t"),
                      job_id="job 9")
    local, remote = Path(engine_options.temp_dir), Path(engine_options.remote_temp_dir)
    others = ["ketter-job_90.zip", "ketter-job_9x+00001.zip", "ketter-job.zip", "notes.txt"]
    for d, side in ((local, False), (remote, True)):
        d.mkdir(parents=True)
        ours = [zip_name("job 9", remote=side)] + [chunk_zip_name("job 9", k, 20, remote=side)
                                                    for k in (0, 7, 19)]
        for name in ours + others:
            (d / name).write_bytes(b"zip")
    (remote / f".{chunk_zip_name('job 9', 8, 20, remote=True)}.Xy12Zw").write_bytes(b"rsync temp")
    cleanup_job_temp(job, engine_options)
    cleanup_job_temp(job, engine_options)  # idempotent
    assert sorted(os.listdir(local)) == sorted(others)
    assert sorted(os.listdir(remote)) == sorted(others)


def test_identical_tree_local_to_local_with_hostile_names(
        tmp_path: Path, chunked: EngineOptions, hostile_tree: Path) -> None:
    out = tmp_path / "local out"
    job = TransferJob(LocalEndpoint(hostile_tree), LocalEndpoint(out), job_id="h")
    small = dataclasses.replace(chunked, zip_chunk_bytes=1024)
    events: list[PhaseEvent] = []
    execute_plan(decide_strategy(job, force=ZIP), options=small, on_phase=events.append)
    assert _cleanup_details(events)["chunks"] > 3
    assert_trees_identical(hostile_tree, out / hostile_tree.name)
    assert temp_leftovers(small) == []


def test_merge_in_chunks_writes_into_the_existing_tree(tmp_path: Path, sshd: SshServer,
                                                       chunked: EngineOptions,
                                                       src: Path) -> None:
    out = tmp_path / "out"
    final = out / src.name
    (final / "Audio Files").mkdir(parents=True)
    (final / "Audio Files" / "old take.wav").write_bytes(b"RIFF old take")
    (final / "Audio Files" / "Kick_0002.wav").write_bytes(b"an older, shorter version")
    job = TransferJob(LocalEndpoint(src), sshd.endpoint(out), job_id="merge",
                      on_existing=OnExisting.MERGE)
    events: list[PhaseEvent] = []
    execute_plan(decide_strategy(job, force=ZIP), options=chunked, on_phase=events.append)
    assert _cleanup_details(events)["chunks"] == len(_done(events, "unzip")) > 3
    merged = tree_snapshot(final)
    assert (final / "Audio Files" / "old take.wav").read_bytes() == b"RIFF old take"
    del merged["Audio Files/old take.wav"]
    assert merged == tree_snapshot(src)  # dir modes and mtimes too, restored last
    assert sorted(os.listdir(out)) == [src.name]  # markers and staging root gone
    assert temp_leftovers(chunked) == []


def test_on_a_long_path_chunks_go_over_separate_connections(
        tmp_path: Path, far_sshd: SshServer, chunked: EngineOptions, src: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 19: through the 50 ms relay, the chunks' sends run one per measured
    connection, each sender over its own ssh connection, opened once and kept for every
    chunk it sends (counted in sshd's log); unzips ride the master."""
    from mvp_core.transfer_engine import path
    from tests.engine.conftest import settled_count

    monkeypatch.setattr(path, "PROBE_MIN_BYTES", 1)
    reference = tree_snapshot(src)
    out = tmp_path / "out"
    job = TransferJob(LocalEndpoint(src), far_sshd.endpoint(out), job_id="far-chunks")
    plan = decide_strategy(job, force=ZIP)
    options = dataclasses.replace(chunked, ssh_max_connections=3)
    before = settled_count(far_sshd)
    events: list[PhaseEvent] = []
    result = execute_plan(plan, options=options, on_phase=events.append)
    made = settled_count(far_sshd) - before
    n = len(_done(events, "send"))
    assert n >= 12
    assert _cleanup_details(events)["connections"] == 3
    assert _cleanup_details(events)["send_streams"] == 3
    assert result.connections == 3 and result.rtt_s is not None and result.rtt_s >= 0.05
    assert made == 1 + 3  # the master, then one connection per sender (not per chunk)
    assert tree_snapshot(out / src.name) == reference


def test_on_a_long_path_a_single_chunk_rides_the_jobs_master(
        tmp_path: Path, far_sshd: SshServer, chunked: EngineOptions, src: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One chunk has one sender: no separate connection is worth its handshake, so the
    send goes over the job's master like every other command (one connection)."""
    from mvp_core.transfer_engine import path
    from tests.engine.conftest import settled_count

    monkeypatch.setattr(path, "PROBE_MIN_BYTES", 1)
    reference = tree_snapshot(src)
    out = tmp_path / "out"
    job = TransferJob(LocalEndpoint(src), far_sshd.endpoint(out), job_id="far-one-chunk")
    options = dataclasses.replace(chunked, ssh_max_connections=3, zip_chunk_bytes=1 << 30)
    before = settled_count(far_sshd)
    events: list[PhaseEvent] = []

    def record(event: PhaseEvent) -> None:
        events.append(event)

    result = execute_plan(decide_strategy(job, force=ZIP), options=options, on_phase=record)
    assert _cleanup_details(events)["chunks"] == len(_done(events, "send")) == 1
    assert result.connections == 1
    assert settled_count(far_sshd) - before == 1
    assert tree_snapshot(out / src.name) == reference
