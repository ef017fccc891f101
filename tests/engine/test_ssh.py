"""ssh: argv, quoting of remote commands, and real failures against a real sshd."""

from __future__ import annotations

import dataclasses
from pathlib import Path, PurePosixPath

import pytest

from mvp_core.transfer_engine.endpoints import SshEndpoint, parse_endpoint
from mvp_core.transfer_engine.errors import (
    InvalidEndpointError,
    RemoteCommandMissingError,
    SshAuthError,
    SshConnectionError,
)
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.ssh import remote_command_argv, run_remote, ssh_base_argv
from tests.fixtures.sshd import SshServer


def test_base_argv_is_strict_and_batch() -> None:
    ep = SshEndpoint(host="srv", user="k", port=2200, path=PurePosixPath("/x"),
                     identity_file=Path("/keys/id"), known_hosts_file=Path("/keys/kh"))
    argv = ssh_base_argv(ep, EngineOptions(ssh_connect_timeout_s=7))
    joined = " ".join(argv)
    for opt in ("BatchMode=yes", "StrictHostKeyChecking=yes", "UserKnownHostsFile=/keys/kh",
                "ConnectTimeout=7", "IdentitiesOnly=yes"):
        assert f"-o {opt}" in joined
    assert argv[argv.index("-i") + 1] == "/keys/id"
    assert argv[argv.index("-p") + 1] == "2200"


def test_remote_command_is_one_quoted_argument() -> None:
    ep = SshEndpoint(host="srv", path=PurePosixPath("/x"))
    argv = remote_command_argv(ep, ["mkdir", "-p", "--", "/a b/$(reboot);`x`"], EngineOptions())
    assert argv[-3:] == ("--", "srv", "mkdir -p -- '/a b/$(reboot);`x`'")


@pytest.mark.parametrize("spec", ["-oProxyCommand=x:/p", "-x@host:/p", "host name:/p"])
def test_option_like_hosts_are_refused_before_any_process(spec: str) -> None:
    with pytest.raises(InvalidEndpointError):
        parse_endpoint(spec)


def test_remote_command_with_hostile_argument_runs_literally(sshd: SshServer, tmp_path: Path
                                                             ) -> None:
    target = tmp_path / "a b $(touch pwned); `id` 'q'"
    run_remote(sshd.endpoint("/"), ["mkdir", "-p", "--", str(target)], EngineOptions(),
               what="mkdir")
    assert target.is_dir()
    assert not (Path.home() / "pwned").exists() and not Path("pwned").exists()


def test_wrong_host_key_is_refused(sshd: SshServer, wrong_known_hosts: Path) -> None:
    ep = sshd.endpoint("/", known_hosts_file=wrong_known_hosts)
    with pytest.raises(SshAuthError, match="host key") as info:
        run_remote(ep, ["true"], EngineOptions(), what="probe")
    assert info.value.exit_code == 255
    assert "Host key verification failed" in info.value.stderr_tail
    assert not info.value.transient


def test_unknown_host_is_refused_not_added(sshd: SshServer, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(SshAuthError, match="host key"):
        run_remote(sshd.endpoint("/", known_hosts_file=empty), ["true"], EngineOptions(),
                   what="probe")
    assert empty.read_text() == ""  # StrictHostKeyChecking=yes never adds a key


def test_unauthorized_key_is_an_auth_error(sshd: SshServer, tmp_path: Path) -> None:
    import subprocess

    other = tmp_path / "id_other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    with pytest.raises(SshAuthError, match="authentication refused"):
        run_remote(sshd.endpoint("/", identity_file=other), ["true"], EngineOptions(),
                   what="probe")


def test_connection_refused_is_transient(sshd: SshServer) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ep = dataclasses.replace(sshd.endpoint("/"), port=port)
    with pytest.raises(SshConnectionError, match="refused") as info:
        run_remote(ep, ["true"], EngineOptions(), what="probe")
    assert info.value.transient


def test_missing_remote_command(sshd_without_unzip: SshServer) -> None:
    with pytest.raises(RemoteCommandMissingError, match="unzip is not installed"):
        run_remote(sshd_without_unzip.endpoint("/"), ["env", "LC_ALL=C.UTF-8", "unzip", "-v"],
                   EngineOptions(), what="unzip")
    # ...while what it does offer still works.
    assert run_remote(sshd_without_unzip.endpoint("/"), ["rsync", "--version"], EngineOptions(),
                      what="rsync").exit_code == 0


@pytest.mark.parametrize("stop_with_us", [True, False])
def test_remote_command_stops_when_we_cancel(sshd: SshServer, tmp_path: Path,
                                             stop_with_us: bool) -> None:
    """sshd sends no SIGHUP without a tty: only the stdin watcher stops a quiet command
    (like unzip -q) when our side is cancelled or killed."""
    import threading
    import time

    from mvp_core.transfer_engine.errors import TransferCancelledError
    from mvp_core.transfer_engine.results import CancelToken

    marker = tmp_path / "finished anyway"
    started = tmp_path / "started"
    cancel = CancelToken()

    def cancel_once_running() -> None:
        deadline = time.monotonic() + 20
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        cancel.cancel()

    threading.Thread(target=cancel_once_running, daemon=True).start()
    script = 'touch "$1"; sleep 1.5; touch "$2"'
    with pytest.raises(TransferCancelledError):
        run_remote(sshd.endpoint("/"), ["sh", "-c", script, "sh", str(started), str(marker)],
                   EngineOptions(), what="quiet work", cancel=cancel, stop_with_us=stop_with_us)
    time.sleep(2.5)
    assert marker.exists() is not stop_with_us


def test_stop_with_us_keeps_exit_code_and_output(sshd: SshServer) -> None:
    result = run_remote(sshd.endpoint("/"), ["sh", "-c", "echo out; echo err >&2; exit 7"],
                        EngineOptions(), what="x", check=False, stop_with_us=True)
    assert (result.exit_code, result.stdout_tail, result.stderr_tail) == (7, "out", "err")
