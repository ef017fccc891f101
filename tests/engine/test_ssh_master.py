"""One ssh connection per job (ssh_master), counted at a real sshd's log.

A private sshd with LogLevel VERBOSE logs one "Accepted publickey" per authenticated
connection; sessions multiplexed over a master log none.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mvp_core.transfer_engine.endpoints import LocalEndpoint
from mvp_core.transfer_engine.errors import (
    SshAuthError,
    TargetNotWritableError,
    TransferCancelledError,
)
from mvp_core.transfer_engine.execute import execute_plan
from mvp_core.transfer_engine.job import TransferJob, TransferMode
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.planner import TransferStrategy, decide_strategy
from mvp_core.transfer_engine.results import CancelToken
from mvp_core.transfer_engine.ssh import run_remote, ssh_base_argv
from mvp_core.transfer_engine.ssh_master import DIR_PREFIX, SOCKET_NAME, ssh_session, start_master
from mvp_core.transfer_engine.ssh_pool import shared_masters
from tests.engine.conftest import temp_leftovers
from tests.fixtures.sshd import SshServer, _keygen, start_sshd, stop_sshd
from tests.fixtures.stack import wait_until
from tests.fixtures.system import process_table
from tests.fixtures.trees import make_session_tree, tree_snapshot


@pytest.fixture(scope="module")
def verbose_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    server = start_sshd(tmp_path_factory.mktemp("sshd_verbose"), log_level="VERBOSE")
    try:
        yield server
    finally:
        stop_sshd(server)


def _accepted(server: SshServer) -> int:
    return (server.workdir / "sshd.log").read_text(errors="replace").count("Accepted publickey")


def _wait_count(server: SshServer, before: int, expected: int) -> int:
    """The log line may trail the job by a moment: wait for it, bounded."""
    deadline = time.monotonic() + 3
    while _accepted(server) - before < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # and no extra one trailing behind
    return _accepted(server) - before


def _our_masters() -> list[str]:
    """Command lines of live ssh masters this test process started (its children) whose
    socket is in a ketter-ssh dir: other processes' masters (a parallel run) don't count."""
    return [p.cmdline for p in process_table().values()
            if p.ppid == os.getpid() and p.argv[:1] == (b"ssh",) and b"-M" in p.argv
            and any(DIR_PREFIX.encode() in a for a in p.argv)]


def _socket_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith(DIR_PREFIX)}


@pytest.fixture(autouse=True)
def private_tempdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Masters' socket dirs go to a temp dir of this test's own (short: socket paths
    are capped near 100 bytes), so another run's dirs on the machine never count."""
    private = Path(tempfile.mkdtemp(prefix="ktm-"))
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    yield private
    monkeypatch.undo()
    shutil.rmtree(private, ignore_errors=True)


@pytest.fixture
def clean_check() -> Iterator[None]:
    before = _socket_dirs()
    yield
    assert _our_masters() == []
    assert _socket_dirs() - before == set()


@pytest.mark.parametrize("strategy", [TransferStrategy.DIRECT, TransferStrategy.ZIP_FIRST],
                         ids=lambda s: s.value)
@pytest.mark.parametrize("multiplex", [True, False], ids=["multiplex", "plain"])
def test_one_connection_per_job(tmp_path: Path, verbose_sshd: SshServer,
                                engine_options: EngineOptions, clean_check: None,
                                strategy: TransferStrategy, multiplex: bool) -> None:
    options = dataclasses.replace(engine_options, ssh_multiplex=multiplex)
    src = make_session_tree(tmp_path / "src", n_audio=20)
    reference = tree_snapshot(src)
    job = TransferJob(LocalEndpoint(src), verbose_sshd.endpoint(tmp_path / "dest"),
                      TransferMode.MOVE, job_id=f"mux-{strategy.value}")
    plan = decide_strategy(job, force=strategy)
    before = _accepted(verbose_sshd)
    result = execute_plan(plan, options=options)
    assert tree_snapshot(tmp_path / "dest" / src.name) == reference
    assert not src.exists()
    assert result.files_transferred == plan.n_files
    assert temp_leftovers(options) == []
    connections = _wait_count(verbose_sshd, before, 1)
    if multiplex:
        assert connections == 1
    else:  # the old behaviour, so the count above proves something
        # a move over plain ssh: prepare, rsync, verify + deliver (one session), staging
        # root (DIRECT; no guarded send without a master: see direct._guard_worth)
        assert connections >= 4, connections


def test_ssh_to_local_job_uses_one_connection(tmp_path: Path, verbose_sshd: SshServer,
                                              engine_options: EngineOptions,
                                              clean_check: None) -> None:
    src = make_session_tree(tmp_path / "remote src", n_audio=5)
    reference = tree_snapshot(src)
    job = TransferJob(verbose_sshd.endpoint(src), LocalEndpoint(tmp_path / "here"),
                      TransferMode.MOVE)
    before = _accepted(verbose_sshd)
    execute_plan(decide_strategy(job, force=TransferStrategy.DIRECT), options=engine_options)
    assert tree_snapshot(tmp_path / "here" / src.name) == reference
    assert not src.exists()
    assert _wait_count(verbose_sshd, before, 1) == 1


def test_failed_job_leaves_no_master(tmp_path: Path, verbose_sshd: SshServer,
                                     engine_options: EngineOptions, clean_check: None) -> None:
    # The target is a file: mkdir under it fails on the remote side, after the master is up.
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    src = make_session_tree(tmp_path / "src", n_audio=2)
    job = TransferJob(LocalEndpoint(src), verbose_sshd.endpoint(blocker / "sub"))
    before = _accepted(verbose_sshd)
    with pytest.raises(TargetNotWritableError, match="Not a directory"):
        execute_plan(decide_strategy(job, force=TransferStrategy.DIRECT), options=engine_options)
    assert _wait_count(verbose_sshd, before, 1) == 1
    assert src.exists()


def test_auth_failure_is_reported_as_before(tmp_path: Path, verbose_sshd: SshServer,
                                            engine_options: EngineOptions,
                                            clean_check: None) -> None:
    other_key = tmp_path / "other_key"
    _keygen(other_key, "not-authorized")
    src = make_session_tree(tmp_path / "src", n_audio=2)
    job = TransferJob(LocalEndpoint(src),
                      verbose_sshd.endpoint(tmp_path / "dest", identity_file=other_key))
    with pytest.raises(SshAuthError, match="authentication refused") as info:
        execute_plan(decide_strategy(job, force=TransferStrategy.DIRECT), options=engine_options)
    assert "Permission denied" in info.value.stderr_tail
    assert "ControlMaster=no" not in " ".join(info.value.argv)  # ran without the dead master


def test_cancel_leaves_no_master(tmp_path: Path, verbose_sshd: SshServer,
                                 engine_options: EngineOptions, clean_check: None) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.wav").write_bytes(os.urandom(4 << 20))
    options = dataclasses.replace(engine_options, bwlimit_kib_s=256)
    job = TransferJob(LocalEndpoint(src), verbose_sshd.endpoint(tmp_path / "dest"))
    cancel = CancelToken()
    timer = threading.Timer(2.0, cancel.cancel)
    timer.start()
    try:
        with pytest.raises(TransferCancelledError):
            execute_plan(decide_strategy(job, force=TransferStrategy.DIRECT), options=options,
                         cancel=cancel)
    finally:
        timer.cancel()
    assert src.exists()


def test_session_options_and_socket_dir(verbose_sshd: SshServer, clean_check: None) -> None:
    ep = verbose_sshd.endpoint("/")
    with ssh_session(ep, EngineOptions(ssh_connect_timeout_s=5)) as options:
        assert options.ssh_control is not None
        sock = Path(options.ssh_control[1])
        assert sock.is_socket()
        assert len(os.fsencode(sock)) <= 100
        assert sock.parent.stat().st_mode & 0o777 == 0o700
        assert len(_our_masters()) == 1
        out = run_remote(ep, ["echo", "over the master"], options, what="echo",
                         capture_stdout=True)
        assert out.stdout == b"over the master\n"
        assert "ControlMaster=no" in out.argv
        # Another host (here: another port) must never ride this master.
        other = dataclasses.replace(ep, port=1 if ep.port != 1 else 2)
        assert "ControlMaster=no" not in ssh_base_argv(other, options)
    assert not sock.parent.exists()
    with ssh_session(ep, EngineOptions(ssh_multiplex=False)) as options:
        assert options.ssh_control is None


def test_a_master_starts_now_and_is_waited_for_later(tmp_path: Path, far_sshd: SshServer,
                                                     clean_check: None) -> None:
    """``start_master`` returns before the handshake (several 50 ms round trips), so it
    overlaps other work; ``ready`` then waits for the socket; ``stop`` leaves nothing."""
    ep = far_sshd.endpoint("/")
    options = EngineOptions(ssh_connect_timeout_s=5)
    master = start_master(ep, options)
    assert master is not None
    try:
        assert not Path(master.control_path).is_socket()
        cancelled = CancelToken()
        cancelled.cancel()
        assert master.ready(cancelled) is None  # a cancelled job does not wait
        assert master.ready() == master.control_path
        assert Path(master.control_path).is_socket() and master.alive()
        assert len(_our_masters()) == 1
    finally:
        master.stop()
    assert not Path(master.sock_dir).exists() and not master.alive()
    other_key = tmp_path / "other_key"
    _keygen(other_key, "not-authorized")
    refused = start_master(far_sshd.endpoint("/", identity_file=other_key), options)
    assert refused is not None
    try:
        assert refused.ready() is None  # auth refused: the master exits, no socket
    finally:
        refused.stop()


def test_dirs_of_killed_jobs_are_swept_live_ones_kept(verbose_sshd: SshServer) -> None:
    """A kill -9'd worker's master dies with it but its socket dir stays: the next
    session removes it; a live master's (another worker's) dir is left alone."""
    dead = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
    live = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
    starting = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))  # no socket yet
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(dead / SOCKET_NAME))  # bound, never listening again: a dead master's
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(str(live / SOCKET_NAME))
        listener.listen()
        with ssh_session(verbose_sshd.endpoint("/"), EngineOptions(ssh_connect_timeout_s=5)):
            pass
        assert not dead.exists()
        assert (live / SOCKET_NAME).is_socket()
        assert starting.is_dir()
    finally:
        listener.close()
        for d in (dead, live, starting):
            if d.exists():
                for p in d.iterdir():
                    p.unlink()
                d.rmdir()


# --- The worker's pool (ssh_persist_s > 0): one connection for jobs in a row. ---

@pytest.fixture
def pooled(engine_options: EngineOptions) -> Iterator[EngineOptions]:
    """Options that use the process-wide pool; the pool is emptied after the test and
    nothing (master, socket dir) may outlive that."""
    before = _socket_dirs()
    try:
        yield dataclasses.replace(engine_options, ssh_persist_s=30.0)
    finally:
        shared_masters.close()
    assert _our_masters() == []
    assert _socket_dirs() - before == set()


def _copy_job(tmp_path: Path, server: SshServer, name: str, n_audio: int = 3
              ) -> tuple[TransferJob, dict[str, tuple[str, int, int, str]], Path]:
    src = make_session_tree(tmp_path / f"src {name}", n_audio=n_audio)
    dest = tmp_path / f"dest {name}"
    job = TransferJob(LocalEndpoint(src), server.endpoint(dest), job_id=f"pool-{name}")
    return job, tree_snapshot(src), dest / src.name


def test_pooled_jobs_in_a_row_share_one_connection(tmp_path: Path, verbose_sshd: SshServer,
                                                   pooled: EngineOptions) -> None:
    before = _accepted(verbose_sshd)
    for name, strategy in (("a", TransferStrategy.DIRECT), ("b", TransferStrategy.ZIP_FIRST),
                           ("c", TransferStrategy.DIRECT)):
        job, reference, delivered = _copy_job(tmp_path, verbose_sshd, name)
        execute_plan(decide_strategy(job, force=strategy), options=pooled)
        assert tree_snapshot(delivered) == reference
        assert len(_our_masters()) == 1  # kept between jobs
    assert _wait_count(verbose_sshd, before, 1) == 1
    assert shared_masters.count() == 1


def test_idle_master_is_stopped_after_persist(tmp_path: Path, verbose_sshd: SshServer,
                                              pooled: EngineOptions) -> None:
    options = dataclasses.replace(pooled, ssh_persist_s=0.5)
    job, reference, delivered = _copy_job(tmp_path, verbose_sshd, "idle")
    execute_plan(decide_strategy(job, force=TransferStrategy.DIRECT), options=options)
    assert tree_snapshot(delivered) == reference
    deadline = time.monotonic() + 10
    while (_our_masters() or shared_masters.count()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _our_masters() == [] and shared_masters.count() == 0
    assert _socket_dirs() == set()  # this test's private temp dir: its socket dir is gone


def _dead(pid: int) -> bool:
    """Gone, or a zombie nobody reaped yet (SIGKILL is not instant: a check right after
    os.kill may still see the master alive and the next job would ride its socket)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_dead_master_is_replaced_by_the_next_job(tmp_path: Path, verbose_sshd: SshServer,
                                                 pooled: EngineOptions) -> None:
    before = _accepted(verbose_sshd)
    job, reference, delivered = _copy_job(tmp_path, verbose_sshd, "first")
    execute_plan(decide_strategy(job, force=TransferStrategy.DIRECT), options=pooled)
    assert tree_snapshot(delivered) == reference
    [master_pid] = [pid for pid, p in process_table().items()
                    if p.ppid == os.getpid() and b"-M" in p.argv]
    os.kill(master_pid, 9)  # the connection dropped between jobs
    wait_until(lambda: _dead(master_pid), timeout=10, what="the master gone")
    job, reference, delivered = _copy_job(tmp_path, verbose_sshd, "second")
    execute_plan(decide_strategy(job, force=TransferStrategy.DIRECT), options=pooled)
    assert tree_snapshot(delivered) == reference
    assert _wait_count(verbose_sshd, before, 2) == 2
    assert len(_our_masters()) == 1


def test_cancel_keeps_the_shared_master_for_the_next_job(
        tmp_path: Path, verbose_sshd: SshServer, pooled: EngineOptions) -> None:
    src = tmp_path / "slow src"
    src.mkdir()
    (src / "big.wav").write_bytes(os.urandom(4 << 20))
    before = _accepted(verbose_sshd)
    cancel = CancelToken()
    timer = threading.Timer(1.5, cancel.cancel)
    timer.start()
    try:
        with pytest.raises(TransferCancelledError):
            execute_plan(decide_strategy(TransferJob(LocalEndpoint(src),
                                                     verbose_sshd.endpoint(tmp_path / "x")),
                                         force=TransferStrategy.DIRECT),
                         options=dataclasses.replace(pooled, bwlimit_kib_s=256), cancel=cancel)
    finally:
        timer.cancel()
    assert src.exists() and not (tmp_path / "x" / "slow src").exists()
    rsyncs = [p for p in process_table().values()
              if p.argv[:1] == (b"rsync",) and any(b"slow src" in a for a in p.argv)]
    assert rsyncs == []
    job, reference, delivered = _copy_job(tmp_path, verbose_sshd, "after cancel")
    execute_plan(decide_strategy(job, force=TransferStrategy.DIRECT), options=pooled)
    assert tree_snapshot(delivered) == reference
    assert _wait_count(verbose_sshd, before, 1) == 1


def test_concurrent_jobs_share_one_master(tmp_path: Path, verbose_sshd: SshServer,
                                          pooled: EngineOptions) -> None:
    jobs = [_copy_job(tmp_path, verbose_sshd, f"c{i}", n_audio=20) for i in range(3)]
    errors: list[BaseException] = []

    def run(job: TransferJob) -> None:
        try:
            execute_plan(decide_strategy(job, force=TransferStrategy.DIRECT), options=pooled)
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    before = _accepted(verbose_sshd)
    threads = [threading.Thread(target=run, args=(job,)) for job, _ref, _dest in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    for _job, reference, delivered in jobs:
        assert tree_snapshot(delivered) == reference
    assert _wait_count(verbose_sshd, before, 1) == 1
    assert len(_our_masters()) == 1


def test_acquiring_from_the_pool_does_not_wait(tmp_path: Path, far_sshd: SshServer,
                                               pooled: EngineOptions) -> None:
    """An acquire starts the master and returns before its handshake (50 ms round
    trips); one acquired meanwhile shares it (one connection); released, it stays warm
    and the next acquire finds it ready. A refused one is ready None and is replaced."""
    from tests.engine.conftest import settled_count

    ep = far_sshd.endpoint("/")
    before = settled_count(far_sshd)
    first = shared_masters.acquire(ep, pooled)
    second = shared_masters.acquire(ep, pooled)
    assert first is not None and second is first
    try:
        assert not Path(first.master.control_path).is_socket()
        assert first.ready() == second.ready() == first.master.control_path
    finally:
        shared_masters.release(first)
        shared_masters.release(second)
    again = shared_masters.acquire(ep, pooled)
    assert again is first and Path(again.master.control_path).is_socket()
    shared_masters.release(again)
    assert settled_count(far_sshd) - before == 1 and shared_masters.count() == 1
    other_key = tmp_path / "other_key"
    _keygen(other_key, "not-authorized")
    refused_ep = far_sshd.endpoint("/", identity_file=other_key)
    refused = shared_masters.acquire(refused_ep, pooled)
    assert refused is not None
    try:
        assert refused.ready() is None
    finally:
        shared_masters.release(refused)
    retried = shared_masters.acquire(refused_ep, pooled)
    assert retried is not None and retried is not refused  # the dead one is not reused
    shared_masters.release(retried)
