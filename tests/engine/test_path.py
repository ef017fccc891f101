"""Connections sized to the path (issue 19): the bandwidth-delay rule (pure), the RTT
probe against a real sshd, and real jobs through the lab's delaying relay: a long
path gives each stream its own ssh connection, a short one keeps them on the master.
Connections are counted from sshd's own log ("Accepted publickey" per connection)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mvp_core.transfer_engine import path, ranges, streams
from mvp_core.transfer_engine.direct import run_transfer
from mvp_core.transfer_engine.endpoints import LocalEndpoint
from mvp_core.transfer_engine.job import TransferJob, TransferMode
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.results import PhaseEvent
from mvp_core.transfer_engine.ssh_master import ssh_session
from tests.engine.conftest import RTT_MS, free_port, settled_count
from tests.fixtures.sshd import SshServer
from tests.fixtures.trees import assert_trees_identical, tree_snapshot


@pytest.mark.parametrize(("rtt_ms", "most", "expected"), [
    (None, 8, 1),      # not measured: as on a LAN
    (0.3, 8, 1),       # loopback / LAN: 1 gbit × 0.3 ms is far below one window
    (20, 8, 2),        # 2.5 MB in flight: two channels
    (50, 8, 4),        # 6.25 MB
    (100, 8, 8),       # 12.5 MB: seven channels' 1.78 MB, and the rest needs an eighth
    (300, 8, 8),       # bounded by the setting
    (100, 1, 1),       # the setting says one
])
def test_connections_follow_the_bandwidth_delay_product(rtt_ms: float | None, most: int,
                                                        expected: int) -> None:
    """A channel carries what it measured through the delay line (85 % of its window
    per round trip), not its whole window: at 100 ms seven left the link short."""
    options = EngineOptions(ssh_max_connections=most)
    rtt = None if rtt_ms is None else rtt_ms / 1000
    assert path.connections_for(rtt, options) == expected


@pytest.mark.parametrize(("rtt_ms", "separate"), [
    (None, False), (0.3, False),
    (20, False),   # 2.5 MB: one TCP connection holds it; measured 1.15x slower apart
    (34, True),    # 4.25 MB: more than one TCP window (4 MiB)
    (50, True), (100, True),
])
def test_separate_connections_only_beyond_one_tcp_window(rtt_ms: float | None,
                                                         separate: bool) -> None:
    rtt = None if rtt_ms is None else rtt_ms / 1000
    assert path.separate_for(rtt, EngineOptions()) is separate


def test_a_faster_link_needs_more_connections() -> None:
    ten_gbit = EngineOptions(link_bytes_s=1_250_000_000, ssh_max_connections=32)
    assert path.connections_for(0.020, ten_gbit) == 15  # 25 MB over 1.78 MB a channel


def test_the_probe_measures_one_round_trip(logged_sshd: SshServer, far_sshd: SshServer,
                                           engine_options: EngineOptions,
                                           tmp_path: Path) -> None:
    near = logged_sshd.endpoint(tmp_path)
    far = far_sshd.endpoint(tmp_path)
    with ssh_session(near, engine_options) as near_options:
        rtt_near = path.measure_rtt(near, near_options)
    with ssh_session(far, engine_options) as far_options:
        rtt_far = path.measure_rtt(far, far_options)
    assert rtt_near is not None and rtt_far is not None
    # The relay holds each chunk RTT/2 each way: at least one RTT, and not two.
    assert RTT_MS / 1000 <= rtt_far < 2 * RTT_MS / 1000 + 0.05, rtt_far
    assert rtt_near < rtt_far


def test_the_probe_of_a_host_that_is_gone_says_none(engine_options: EngineOptions,
                                                   logged_sshd: SshServer) -> None:
    gone = dataclasses.replace(logged_sshd.endpoint("/"), port=free_port())
    assert path.measure_rtt(gone, engine_options) is None


def _tree(parent: Path) -> Path:
    root = parent / "session"
    (root / "Audio Files").mkdir(parents=True)
    for i in range(6):
        (root / "Audio Files" / f"take {i}.wav").write_bytes(bytes([i]) * (300 * 1024 + i))
    (root / "empty").mkdir()
    (root / "Session.ptx").write_bytes(b"p" * 999)
    return root


@pytest.fixture
def small_jobs_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test trees are small: let them have streams and a measured path."""
    monkeypatch.setattr(streams, "MIN_STREAM_BYTES", 1)
    monkeypatch.setattr(ranges, "MIN_RANGE", 1)
    monkeypatch.setattr(path, "PROBE_MIN_BYTES", 1)


def _send(events: list[PhaseEvent]) -> PhaseEvent:
    [done] = [e for e in events if e.phase == "send" and e.status == "done"]
    return done


@pytest.mark.parametrize("direction", ["push", "pull"])
def test_a_long_path_gives_each_stream_its_own_connection(
        tmp_path: Path, far_sshd: SshServer, engine_options: EngineOptions,
        small_jobs_count: None, direction: str) -> None:
    src = _tree(tmp_path / "src")
    reference = tree_snapshot(src)
    here = tmp_path / "here"
    job = (TransferJob(LocalEndpoint(src), far_sshd.endpoint(here), TransferMode.MOVE)
           if direction == "push" else
           TransferJob(far_sshd.endpoint(src), LocalEndpoint(here), TransferMode.MOVE))
    options = dataclasses.replace(engine_options, direct_streams=1, ssh_max_connections=8)
    before = settled_count(far_sshd)
    events: list[PhaseEvent] = []
    result = run_transfer(job, options=options, on_phase=events.append)
    made = settled_count(far_sshd) - before
    # >= 50 ms × 1 gbit over 2 MiB windows: 3 connections or more (the measured RTT
    # decides), so as many streams though 1 was set.
    assert result.rtt_s is not None and result.rtt_s >= RTT_MS / 1000
    wanted = path.connections_for(result.rtt_s, options)
    assert wanted >= 3 and result.streams == wanted and result.connections == wanted
    assert result.send_rate_bytes_s is not None and result.send_rate_bytes_s > 0
    send = _send(events)
    assert send.details["connections"] == wanted and send.details["rtt_ms"] >= RTT_MS
    assert send.details["rate_bytes_s"] == result.send_rate_bytes_s
    assert made == 1 + wanted  # the master (control commands, final pass), one per stream
    assert tree_snapshot(here / src.name) == reference and not src.exists()


def test_a_short_path_keeps_the_streams_on_the_master(
        tmp_path: Path, logged_sshd: SshServer, engine_options: EngineOptions,
        small_jobs_count: None) -> None:
    src = _tree(tmp_path / "src")
    options = dataclasses.replace(engine_options, direct_streams=3, ssh_max_connections=8)
    before = settled_count(logged_sshd)
    events: list[PhaseEvent] = []
    result = run_transfer(TransferJob(LocalEndpoint(src), logged_sshd.endpoint(tmp_path / "t")),
                          options=options, on_phase=events.append)
    made = settled_count(logged_sshd) - before
    assert result.streams == 3 and result.connections == 1
    assert result.rtt_s is not None and _send(events).details["connections"] == 1
    assert made == 1
    assert_trees_identical(src, tmp_path / "t" / src.name)


def test_a_small_job_is_not_probed(tmp_path: Path, logged_sshd: SshServer,
                                   engine_options: EngineOptions) -> None:
    src = _tree(tmp_path / "src")
    events: list[PhaseEvent] = []
    result = run_transfer(TransferJob(LocalEndpoint(src), logged_sshd.endpoint(tmp_path / "t")),
                          options=engine_options, on_phase=events.append)
    assert result.rtt_s is None and result.connections == 1
    assert _send(events).details["rtt_ms"] is None


def test_a_push_to_a_host_measured_lately_starts_its_connections_beside_the_master(
        tmp_path: Path, far_sshd: SshServer, engine_options: EngineOptions,
        small_jobs_count: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first big job to a far host measures it; the next one (any folder there)
    starts its own connections before its master and the probe, and its streams run
    over those: no connection beyond them is opened."""
    from mvp_core.transfer_engine import direct
    from mvp_core.transfer_engine.steps import list_source

    src = _tree(tmp_path / "src")
    options = dataclasses.replace(engine_options, direct_streams=1, ssh_max_connections=8)
    first = far_sshd.endpoint(tmp_path / "first")
    assert path.remembered(first) is None
    run_transfer(TransferJob(LocalEndpoint(src), first), options=options)
    second = far_sshd.endpoint(tmp_path / "second")
    facts = path.remembered(second)
    assert facts is not None and facts.separate
    assert facts.rtt_s is not None and facts.rtt_s >= RTT_MS / 1000
    job = TransferJob(LocalEndpoint(src), second)
    early = direct._early_count(second, list_source(job, options), options)
    assert early >= 3
    # What starts when: the connections (with their count) and the job's master.
    order: list[str] = []
    real_slots, real_master = path.open_slots, direct.job_ssh_session

    def slots(endpoint: object, opts: EngineOptions, count: int, *more: object) -> object:
        order.append(f"slots {count}")
        return real_slots(endpoint, opts, count, *more)  # type: ignore[arg-type]

    def master(*args: object, **kw: object) -> object:
        order.append("master")
        return real_master(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(path, "open_slots", slots)
    monkeypatch.setattr(direct, "job_ssh_session", master)
    before = settled_count(far_sshd)
    result = run_transfer(job, options=options)
    made = settled_count(far_sshd) - before
    assert order == [f"slots {early}", "master"]  # before the master, and only then
    assert result.streams >= 3 and result.connections == result.streams
    assert made == 1 + early  # the master and the early connections, nothing more
    assert_trees_identical(src, tmp_path / "second" / src.name)
    # A small job to that host starts none early; nor does any job once it is forgotten.
    monkeypatch.setattr(path, "PROBE_MIN_BYTES", 1 << 40)
    assert direct._early_count(second, list_source(job, options), options) == 0
    monkeypatch.setattr(path, "PROBE_MIN_BYTES", 1)
    path.forget_paths()
    assert direct._early_count(second, list_source(job, options), options) == 0


def test_the_worker_keeps_a_long_paths_connections_warm_for_the_next_job(
        tmp_path: Path, far_sshd: SshServer, engine_options: EngineOptions,
        small_jobs_count: None) -> None:
    """With ``ssh_persist_s`` (the worker's default) the slots' masters stay in the
    process's pool like the job's own: a second job to that host within the time opens
    no connection at all, and its streams still run one per slot."""
    from mvp_core.transfer_engine.ssh_pool import shared_masters

    src = _tree(tmp_path / "src")
    options = dataclasses.replace(engine_options, direct_streams=1, ssh_max_connections=8,
                                  ssh_persist_s=60.0)
    try:
        before = settled_count(far_sshd)
        first = run_transfer(TransferJob(LocalEndpoint(src), far_sshd.endpoint(tmp_path / "a")),
                             options=options)
        assert settled_count(far_sshd) - before == 1 + first.connections
        assert first.connections >= 3 and shared_masters.count() == 1 + first.connections
        before = settled_count(far_sshd)
        second = run_transfer(TransferJob(LocalEndpoint(src), far_sshd.endpoint(tmp_path / "b")),
                              options=options)
        assert settled_count(far_sshd) - before == 0
        assert second.connections == first.connections and second.streams == first.streams
        assert_trees_identical(src, tmp_path / "b" / src.name)
    finally:
        shared_masters.close()
    assert shared_masters.count() == 0
