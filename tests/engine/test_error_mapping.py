"""Pure mappings from tool output to the error tree: ssh, unzip, and the tree itself."""

from __future__ import annotations

import pytest

from mvp_core.transfer_engine import errors
from mvp_core.transfer_engine.errors import (
    CommandFailedError,
    NoSpaceError,
    RemoteCommandMissingError,
    SshAuthError,
    SshConnectionError,
    TargetNotWritableError,
    TransferError,
)
from mvp_core.transfer_engine.runner import CommandResult
from mvp_core.transfer_engine.ssh import classify_ssh_failure, missing_command
from mvp_core.transfer_engine.unzip import UNZIP_EXIT_CODES, raise_for_unzip


@pytest.mark.parametrize(
    ("stderr", "cls", "needle"),
    [
        ("Host key verification failed.", SshAuthError, "host key"),
        ("@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@", SshAuthError, "host key"),
        ("No ED25519 host key is known for [h]:22 and you have requested strict checking.",
         SshAuthError, "host key"),
        ("root@h: Permission denied (publickey,password).", SshAuthError, "authentication"),
        ('Load key "/k": invalid format', SshAuthError, "identity"),
        ("ssh: Could not resolve hostname nope: Name or service not known", SshConnectionError,
         "resolve"),
        ("ssh: connect to host h port 22: Connection refused", SshConnectionError, "refused"),
        ("Connection reset by 10.0.0.2 port 22", SshConnectionError, "lost"),
        ("ssh: connect to host h port 22: Connection timed out", SshConnectionError, "timeout"),
        ("something new and strange", SshConnectionError, "ssh failed"),
    ],
)
def test_ssh_255_classification(stderr: str, cls: type, needle: str) -> None:
    found = classify_ssh_failure(255, stderr)
    assert found is not None
    assert found[0] is cls and needle in found[1]


def test_not_ssh_when_exit_is_not_255_and_stderr_is_silent() -> None:
    assert classify_ssh_failure(1, "mkdir: cannot create directory") is None


@pytest.mark.parametrize(
    ("code", "stderr", "expected"),
    [
        (127, "bash: line 1: unzip: command not found", "unzip"),
        (127, "sh: 1: unzip: not found", "unzip"),
        (127, "env: 'unzip': No such file or directory", "unzip"),
        (127, "", "a remote command"),
        (1, "unzip: cannot find zipfile", None),
    ],
)
def test_missing_command(code: int, stderr: str, expected: str | None) -> None:
    assert missing_command(code, stderr) == expected


@pytest.mark.parametrize(
    ("code", "stderr", "cls", "transient"),
    [
        (50, "", NoSpaceError, False),
        (2, "error: write error (disk full?)", NoSpaceError, False),
        (127, "env: 'unzip': No such file or directory", RemoteCommandMissingError, False),
        (2, "checkdir error:  cannot create /t/x\n                 Permission denied",
         TargetNotWritableError, False),
        (9, "unzip:  cannot find or open /tmp/k.zip", CommandFailedError, True),
        (51, "", CommandFailedError, True),
        (3, "", CommandFailedError, False),
    ],
)
def test_unzip_failures(code: int, stderr: str, cls: type, transient: bool) -> None:
    with pytest.raises(cls) as info:
        raise_for_unzip(CommandResult(("unzip",), code, "", stderr, 0.1), "srv")
    assert info.value.transient is transient
    assert info.value.exit_code == code


def test_unzip_ok_and_warning() -> None:
    assert raise_for_unzip(CommandResult(("unzip",), 0, "", "", 0.1), "srv") == ()
    assert raise_for_unzip(CommandResult(("unzip",), 1, "", "", 0.1), "srv")
    assert UNZIP_EXIT_CODES[50][1] == "error"


def test_every_error_has_a_distinct_code_and_json_evidence() -> None:
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, TransferError)]
    assert len({c.code for c in classes}) == len(classes) == 15
    err = CommandFailedError("rsync: boom", transient=True, argv=["rsync", "-a"], exit_code=12,
                             stderr_tail="line1\nrsync error: boom (code 12)")
    assert str(err) == "rsync: boom (exit 12) — rsync error: boom (code 12)"
    assert err.as_dict() == {
        "error_type": "CommandFailedError", "code": "command_failed", "message": "rsync: boom",
        "transient": True, "exit_code": 12, "argv": ["rsync", "-a"],
        "stderr_tail": "line1\nrsync error: boom (code 12)"}
    assert SshConnectionError("x").transient and not SshAuthError("x").transient


_USAGE = ("usage: rsync [-0468BCDEFHIKLOPRSTWVabcdghiklnopqrtuvxyz] [-e program]\n"
          "\t[--stats] [--suffix] [--super] [--timeout=seconds]\n")
_CLOSED = ("rsync: connection unexpectedly closed (0 bytes received so far) [sender]\n"
           "rsync error: error in rsync protocol data stream (code 12) at io.c(285) "
           "[sender=3.5.0]")


@pytest.mark.parametrize(
    ("stderr", "option"),
    [
        # What the maclike kit's openrsync and rsync 2.6.9 print (selftest's matrix).
        ("rsync: invalid option -- 's'\n" + _USAGE + _CLOSED, "-s"),
        ("rsync: unrecognized option '--mkpath'\n" + _USAGE + _CLOSED, "--mkpath"),
        ("rsync: on remote machine: -slogDtpre.iLsfxCIvu: unknown option\n"
         "rsync error: syntax or usage error (code 1) at main.c(1337) [server=2.6.9]\n" + _CLOSED,
         "-slogDtpre.iLsfxCIvu"),
    ],
)
def test_an_option_refused_by_an_old_remote_rsync_is_not_a_network_fault(
        stderr: str, option: str) -> None:
    from mvp_core.transfer_engine.rsync import raise_for_result

    with pytest.raises(CommandFailedError) as caught:
        raise_for_result(CommandResult(("rsync",), 12, "", stderr, 0.1))
    error = caught.value
    assert not isinstance(error, SshConnectionError) and not error.transient
    assert "unreachable" not in str(error)
    assert "the remote rsync (protocol 29" in error.message
    assert f"refused the option {option}" in error.message


def test_a_usage_line_mentioning_timeout_is_not_an_ssh_timeout() -> None:
    assert classify_ssh_failure(12, _USAGE + _CLOSED) is None
