"""rsync module: exit-code table, stderr refinement, argv, progress2 parsing."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from mvp_core.transfer_engine import rsync
from mvp_core.transfer_engine.endpoints import LocalEndpoint, SshEndpoint
from mvp_core.transfer_engine.errors import (
    CommandFailedError,
    NoSpaceError,
    RemoteCommandMissingError,
    SourceMissingError,
    SshAuthError,
    SshConnectionError,
    TargetNotWritableError,
)
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.runner import CommandResult


@pytest.mark.parametrize(
    ("code", "outcome", "transient"),
    [
        (0, rsync.OK, False),
        (1, rsync.ERROR, False),
        (3, rsync.ERROR, False),
        (5, rsync.ERROR, True),
        (10, rsync.ERROR, True),
        (11, rsync.ERROR, True),
        (12, rsync.ERROR, True),
        (20, rsync.ERROR, True),
        (23, rsync.ERROR, False),
        (24, rsync.WARNING, False),
        (25, rsync.ERROR, False),
        (30, rsync.ERROR, True),
        (35, rsync.ERROR, True),
        (255, rsync.ERROR, True),
        (99, rsync.ERROR, False),
    ],
)
def test_exit_code_table(code: int, outcome: str, transient: bool) -> None:
    meaning = rsync.interpret_exit(code)
    assert (meaning.outcome, meaning.transient) == (outcome, transient)
    assert meaning.meaning


@pytest.mark.parametrize(
    ("code", "stderr", "cls", "transient"),
    [
        (23, 'rsync: [receiver] write failed on "/t/a.wav": No space left on device (28)',
         NoSpaceError, False),
        (11, "rsync: [receiver] write failed: Disk quota exceeded (122)", NoSpaceError, False),
        (12, "bash: line 1: rsync: command not found\nrsync: connection unexpectedly closed",
         RemoteCommandMissingError, False),
        (12, "sh: 1: rsync: not found\nrsync error: error in rsync protocol data stream",
         RemoteCommandMissingError, False),
        (255, "Host key verification failed.\nrsync: connection unexpectedly closed",
         SshAuthError, False),
        (255, "root@h: Permission denied (publickey).", SshAuthError, False),
        (255, "ssh: connect to host h port 22: Connection refused", SshConnectionError, True),
        (12, "Connection reset by peer", SshConnectionError, True),
        (23, 'rsync: [sender] link_stat "/src/x" failed: No such file or directory (2)',
         SourceMissingError, False),
        (23, 'rsync: [receiver] mkstemp "/t/.a.XXXX" failed: Permission denied (13)',
         TargetNotWritableError, False),
        (3, 'rsync: [Receiver] mkdir "/ro/x" failed: Read-only file system (30)',
         TargetNotWritableError, False),
        (23, "rsync: some other trouble", CommandFailedError, False),
        (30, "rsync error: timeout in data send/receive (code 30)", CommandFailedError, True),
    ],
)
def test_stderr_refines_the_code(code: int, stderr: str, cls: type, transient: bool) -> None:
    result = CommandResult(("rsync", "x"), code, "", stderr, 0.1)
    with pytest.raises(cls) as info:
        rsync.raise_for_result(result)
    err = info.value
    assert err.transient is transient
    assert err.exit_code == code
    assert err.stderr_tail == stderr
    assert err.argv == ("rsync", "x")
    assert f"(exit {code})" in str(err)


def test_vanished_files_are_a_warning_not_an_error() -> None:
    warnings = rsync.raise_for_result(CommandResult(("rsync",), 24, "", "file has vanished", 1))
    assert warnings and "vanished" in warnings[0]
    assert rsync.raise_for_result(CommandResult(("rsync",), 0, "", "", 1)) == ()


def test_argv_local_to_ssh_is_exact() -> None:
    target = SshEndpoint(host="srv", user="ketter", port=2222,
                         path=PurePosixPath("/data/in box $x"),
                         identity_file=Path("/k/id"), known_hosts_file=Path("/k/kh"))
    argv = rsync.build_argv(LocalEndpoint(Path("/src/My Session")), target,
                            EngineOptions(rsync_io_timeout_s=60, bwlimit_kib_s=500))
    assert argv[:7] == ("rsync", "-a", "--no-owner", "--no-group", "-s", "--info=progress2",
                        "--no-inc-recursive")
    assert "--partial-dir=.ketter-partial" in argv
    assert "--timeout=60" in argv and "--bwlimit=500" in argv
    rsh = argv[argv.index("-e") + 1]
    assert rsh.startswith("ssh -o BatchMode=yes -o StrictHostKeyChecking=yes "
                          "-o UserKnownHostsFile=/k/kh")
    assert "-i /k/id -o IdentitiesOnly=yes -p 2222" in rsh
    # Paths are passed unquoted: -s keeps them away from the remote shell.
    assert argv[-3:] == ("--", "/src/My Session", "ketter@srv:/data/in box $x/")


def test_argv_without_timeout_or_ssh() -> None:
    argv = rsync.build_argv(LocalEndpoint(Path("/a/b")), LocalEndpoint(Path("/c")),
                            EngineOptions(rsync_io_timeout_s=0), partial_dir=None)
    assert "-e" not in argv and not any(a.startswith("--timeout") for a in argv)
    assert not any(a.startswith("--partial-dir") for a in argv)
    assert argv[-2:] == ("/a/b", "/c/")


def test_relative_local_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    monkeypatch.chdir(tmp_path)
    argv = rsync.build_argv(LocalEndpoint(Path("host:odd")), LocalEndpoint(Path("-dest")),
                            EngineOptions())
    assert argv[-2:] == (f"{tmp_path}/host:odd", f"{tmp_path}/-dest/")


def test_ipv6_host_is_bracketed() -> None:
    ep = SshEndpoint(host="::1", path=PurePosixPath("/x"))
    assert rsync.endpoint_arg(ep, trailing_slash=True) == "[::1]:/x/"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("      1,234,567  45%   12.34MB/s    0:00:01 (xfr#12, to-chk=100/200)",
         (1234567, 45, 12, 100, 200)),
        ("         32,768 100%   31.25MB/s    0:00:00 (xfr#1, ir-chk=0/1)", (32768, 100, 1, 0, 1)),
        ("              0   0%    0.00kB/s    0:00:00", (0, 0, None, None, None)),
        ("  1.234.567  45%   12,34MB/s    0:00:01 (xfr#12, to-chk=1/2)", (1234567, 45, 12, 1, 2)),
    ],
)
def test_progress2_lines(line: str, expected: tuple[object, ...]) -> None:
    parsed = rsync.parse_progress2(line)
    assert parsed is not None
    assert (parsed.bytes_done, parsed.percent, parsed.files_transferred, parsed.to_check,
            parsed.total_entries) == expected


@pytest.mark.parametrize("line", ["sending incremental file list", "My Session/a.wav", "",
                                  "total size is 1,000  speedup is 1.00"])
def test_non_progress_lines_are_ignored(line: str) -> None:
    assert rsync.parse_progress2(line) is None
