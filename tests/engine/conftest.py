"""Engine test helpers: per-test temp dirs for both sides, quick job builders."""

from __future__ import annotations

import dataclasses
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mvp_core.transfer_engine import path
from mvp_core.transfer_engine.options import EngineOptions
from tests.fixtures.sshd import SshServer, start_sshd, stop_sshd

RELAY = Path(__file__).resolve().parents[2] / "infra" / "lab" / "delay_relay.py"
RTT_MS = 50  # the far sshd's round trip: a long path, yet quick tests


@pytest.fixture(autouse=True)
def _no_remembered_paths() -> Iterator[None]:
    """Each test measures its own paths: none is remembered from an earlier test."""
    path.forget_paths()
    yield
    path.forget_paths()


@pytest.fixture
def engine_options(tmp_path: Path) -> EngineOptions:
    """Separate local and "remote" temp dirs so cleanup on each side is visible."""
    return EngineOptions(temp_dir=tmp_path / "local_tmp", remote_temp_dir=str(tmp_path / "remote_tmp"),
                         ssh_connect_timeout_s=5, rsync_io_timeout_s=30)


def temp_leftovers(options: EngineOptions) -> list[str]:
    """Every file left in either temp dir (empty list = clean)."""
    found: list[str] = []
    for d in (Path(options.temp_dir), Path(options.remote_temp_dir)):
        if d.exists():
            found += [str(p) for p in d.rglob("*")]
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def logged_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """An sshd that logs each accepted connection (the count of connections a job made)."""
    server = start_sshd(tmp_path_factory.mktemp("sshd_logged"), log_level="INFO")
    try:
        yield server
    finally:
        stop_sshd(server)


@pytest.fixture(scope="session")
def far_sshd(logged_sshd: SshServer, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[SshServer]:
    """The same sshd behind the lab's relay adding ``RTT_MS`` (its own port, and a
    known_hosts line for it with the same host key)."""
    port = free_port()
    relay = subprocess.Popen([sys.executable, str(RELAY), "--listen", f"127.0.0.1:{port}",
                              "--to", f"127.0.0.1:{logged_sshd.port}", "--rtt-ms", str(RTT_MS)])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "relay never listened"
                time.sleep(0.05)
        known = tmp_path_factory.mktemp("far") / "known_hosts"
        known.write_text(f"[127.0.0.1]:{port} {logged_sshd.host_public_key}\n")
        yield dataclasses.replace(logged_sshd, port=port, known_hosts_file=known)
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(timeout=10)


def accepted(server: SshServer) -> int:
    return (server.workdir / "sshd.log").read_text().count("Accepted publickey")


def settled_count(server: SshServer) -> int:
    """The accept count once sshd has logged every connection made so far."""
    last, deadline = -1, time.monotonic() + 5
    while time.monotonic() < deadline:
        now = accepted(server)
        if now == last:
            return now
        last = now
        time.sleep(0.2)
    return last
