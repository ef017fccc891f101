"""rsync: argv construction, ``--info=progress2`` parsing, exit-code interpretation.

Flags and why:
- ``-a``: recursion, permissions (exec bits), mtimes, symlinks;
- ``--no-owner --no-group``: files belong to the receiving account, as with ZIP_FIRST
  (unzip does not restore owners either) and as users on two hosts differ anyway;
- ``-s`` (``--protect-args``), when both rsyncs understand it (``capabilities``):
  names travel inside rsync's protocol, not through the remote shell, so spaces,
  quotes, ``$``, ``;`` and backticks survive and remote paths are NOT shell-quoted.
  With a protocol-29 peer (a Mac's openrsync or rsync 2.6.9) the remote path is
  quoted once with ``shlex.quote`` instead (and ``--old-args`` keeps a GNU rsync
  >= 3.2.4 here from escaping it again);
- ``--partial-dir``: an interrupted file is kept aside, never under its real name,
  and the next attempt resumes it;
- ``--info=progress2 --no-inc-recursive`` (a GNU rsync >= 3.1 here): one
  whole-transfer progress line with honest totals (the file list is built before
  sending starts);
- ``--timeout``: give up after that many seconds without I/O (a stalled link);
- ``-e`` is ``shlex.join(ssh argv)``: rsync splits it like a shell would;
- ``--rsync-path`` (only when asked): a remote command line that runs before the
  remote rsync and ``exec``s it (``delivery.guard_rsync_path``), so a look at the
  target rides in rsync's own ssh session instead of costing one more; else the
  portal's ``rsync_path`` (``SshEndpoint.rsync_path``).

Exit codes come from rsync's ``errcode.h``; every code is classified in one table,
and stderr patterns refine it (disk full, missing source, unwritable target).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mvp_core.transfer_engine.capabilities import GNU_FLAGS, RsyncFlags, rsync_flags
from mvp_core.transfer_engine.endpoints import Endpoint, SshEndpoint
from mvp_core.transfer_engine.errors import (
    CommandFailedError,
    NoSpaceError,
    RemoteCommandMissingError,
    SourceMissingError,
    TargetNotWritableError,
    TransferError,
)
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.results import CancelToken, Progress
from mvp_core.transfer_engine.runner import CommandResult, run_command
from mvp_core.transfer_engine.ssh import classify_ssh_failure, missing_command, rsync_rsh

PARTIAL_DIR = ".ketter-partial"


def partial_dir_for(names: Iterable[str]) -> str:
    """rsync hides every file or folder named like its ``--partial-dir`` from the
    transfer: a source holding a ``.ketter-partial`` of its own gets another name."""
    taken = {name.rsplit("/", 1)[-1] for name in names}
    candidate, n = PARTIAL_DIR, 1
    while candidate in taken:
        candidate, n = f"{PARTIAL_DIR}-{n}", n + 1
    return candidate

OK, WARNING, ERROR = "ok", "warning", "error"


@dataclass(frozen=True)
class ExitMeaning:
    meaning: str
    outcome: str  # ok | warning | error
    transient: bool


# rsync's errcode.h. Transient = another attempt can help (FTS3/lsyncd practice).
RSYNC_EXIT_CODES: dict[int, ExitMeaning] = {
    0: ExitMeaning("success", OK, False),
    1: ExitMeaning("syntax or usage error", ERROR, False),
    2: ExitMeaning("protocol incompatibility", ERROR, False),
    3: ExitMeaning("errors selecting input/output files or directories", ERROR, False),
    4: ExitMeaning("requested action not supported", ERROR, False),
    5: ExitMeaning("error starting client-server protocol", ERROR, True),
    6: ExitMeaning("daemon unable to append to log file", ERROR, True),
    10: ExitMeaning("error in socket I/O", ERROR, True),
    11: ExitMeaning("error in file I/O", ERROR, True),
    12: ExitMeaning("error in rsync protocol data stream (connection lost?)", ERROR, True),
    13: ExitMeaning("errors with program diagnostics", ERROR, False),
    14: ExitMeaning("error in IPC code", ERROR, True),
    15: ExitMeaning("sibling process crashed", ERROR, True),
    16: ExitMeaning("sibling process terminated abnormally", ERROR, True),
    19: ExitMeaning("received SIGUSR1", ERROR, True),
    20: ExitMeaning("received SIGINT, SIGTERM or SIGHUP", ERROR, True),
    21: ExitMeaning("some error returned by waitpid()", ERROR, True),
    22: ExitMeaning("error allocating core memory buffers", ERROR, True),
    23: ExitMeaning("partial transfer due to error (some files were not transferred)",
                    ERROR, False),
    24: ExitMeaning("some source files vanished before they could be transferred",
                    WARNING, False),
    25: ExitMeaning("the --max-delete limit stopped deletions", ERROR, False),
    30: ExitMeaning("timeout in data send/receive (stalled link)", ERROR, True),
    35: ExitMeaning("timeout waiting for daemon connection", ERROR, True),
    255: ExitMeaning("ssh connection failed", ERROR, True),
}
_UNKNOWN = ExitMeaning("unknown rsync exit code", ERROR, False)

_NO_SPACE = re.compile(r"No space left on device|Disk quota exceeded|ENOSPC", re.IGNORECASE)
_SOURCE_MISSING = re.compile(
    r"(link_stat|change_dir) .*failed: No such file or directory", re.IGNORECASE)
_TARGET_REFUSED = re.compile(
    r"(\[receiver\]|\[generator\]|mkdir|mkstemp|rename|recv_files|chdir).*"
    r"(Permission denied|Read-only file system)", re.IGNORECASE)
# An rsync that refused an option: GNU 2.6.9 on the server ("on remote machine: -slogD...:
# unknown option"), openrsync ("invalid option -- 's'", "unrecognized option '--mkpath'"),
# BSD getopt ("illegal option -- s").
_REFUSED_OPTION = re.compile(
    r"on remote machine: (?P<remote>\S+): unknown option"
    r"|(?:invalid|illegal) option -- '?(?P<short>[^'\s])'?"
    r"|unrecognized option '(?P<long>--[^'\s]+)'"
    r"|rsync: (?P<local>--?[\w-]+): unknown option")
# Exit codes where ssh (the transport) is the likely culprit.
_TRANSPORT_CODES = {5, 10, 12, 14, 255}


def interpret_exit(exit_code: int) -> ExitMeaning:
    """The table lookup alone: what rsync says this code means."""
    return RSYNC_EXIT_CODES.get(exit_code, _UNKNOWN)


def classify_failure(exit_code: int, stderr_tail: str) -> tuple[type[TransferError], str, bool]:
    """Error class, message and transience for a failed rsync (stderr refines the code)."""
    meaning = interpret_exit(exit_code)
    if _NO_SPACE.search(stderr_tail):
        return NoSpaceError, "no space left on the receiving side", False
    refused = refused_option(exit_code, stderr_tail)
    if refused is not None:
        return CommandFailedError, refused, False
    if exit_code in _TRANSPORT_CODES or exit_code == 127:
        cmd = missing_command(exit_code, stderr_tail)
        if cmd:
            return RemoteCommandMissingError, f"{cmd} is not installed on the remote host", False
    if exit_code in _TRANSPORT_CODES:
        ssh = classify_ssh_failure(exit_code, stderr_tail)
        if ssh is not None:
            cls, message = ssh
            return cls, message, cls.transient
    if _SOURCE_MISSING.search(stderr_tail) and "[sender]" in stderr_tail:
        return SourceMissingError, "source does not exist", False
    if _TARGET_REFUSED.search(stderr_tail):
        return TargetNotWritableError, "target cannot be written", False
    return CommandFailedError, f"rsync: {meaning.meaning}", meaning.transient


def refused_option(exit_code: int, stderr_tail: str) -> str | None:
    """Which side's rsync refused which option, said as such (an old peer's refusal
    ends in exit 12, "protocol data stream", which is not a network fault)."""
    match = _REFUSED_OPTION.search(stderr_tail)
    if match is None:
        return None
    option = match["remote"] or match["long"] or (f"-{match['short']}" if match["short"]
                                                   else match["local"])
    remote = match["local"] is None and (exit_code == 12 or match["remote"] is not None
                                         or "[server=" in stderr_tail)
    side = ("the remote rsync (protocol 29, e.g. a Mac's openrsync or rsync 2.6.9)"
            if remote else "this machine's rsync")
    return (f"{side} refused the option {option}: the two rsyncs do not understand the same "
            "options (set the portal's rsync_path to a newer rsync, or report this)")


def raise_for_result(result: CommandResult) -> tuple[str, ...]:
    """Raise the typed error for a failed rsync; return warnings for a tolerated one."""
    meaning = interpret_exit(result.exit_code)
    if meaning.outcome == OK:
        return ()
    if meaning.outcome == WARNING:
        return (f"rsync exit {result.exit_code}: {meaning.meaning}",)
    cls, message, transient = classify_failure(result.exit_code, result.stderr_tail)
    evidence = result.evidence()
    if cls is CommandFailedError:
        raise CommandFailedError(message, transient=transient, **evidence)
    raise cls(message, **evidence)


def endpoint_arg(endpoint: Endpoint, *, trailing_slash: bool = False,
                 quote: bool = False) -> str:
    """rsync's spelling of an endpoint. Local paths are made absolute so a ``:`` or a
    leading ``-`` in a name can never be read as a host or an option. ``quote``: the
    remote shell will parse the remote path (no ``-s``), so it is quoted once."""
    if isinstance(endpoint, SshEndpoint):
        host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
        user = f"{endpoint.user}@" if endpoint.user else ""
        path = str(endpoint.path)
        path = path.rstrip('/') + '/' if trailing_slash else path
        return f"{user}{host}:{shlex.quote(path) if quote else path}"
    path = str(Path(endpoint.path).absolute())
    return path.rstrip("/") + "/" if trailing_slash else path


def build_argv(
    source: Endpoint,
    target: Endpoint,
    options: EngineOptions,
    *,
    partial_dir: str | None = PARTIAL_DIR,
    extra: tuple[str, ...] = (),
    rsync_path: str | None = None,
    as_file: bool = False,
    flags: RsyncFlags = GNU_FLAGS,
) -> tuple[str, ...]:
    """rsync argv copying ``source`` INTO the directory ``target`` (``target/<basename>``).

    ``extra``: more options (e.g. filters), placed before the paths.
    ``rsync_path``: the remote side's command line (see the module doc).
    ``as_file``: ``target`` is the file's own new name, not a directory to copy into.
    ``flags``: what both rsyncs understand (``capabilities.rsync_flags``).
    """
    remote = source if isinstance(source, SshEndpoint) else target
    rsh = rsync_rsh(remote, options) if isinstance(remote, SshEndpoint) else None
    if rsync_path is None and isinstance(remote, SshEndpoint) and remote.rsync_path:
        rsync_path = shlex.quote(remote.rsync_path)
    quote = flags.quote_remote
    if not flags.no_implied_dirs:
        extra = tuple(e for e in extra if e != "--no-implied-dirs")
    if isinstance(source, SshEndpoint) and not flags.sender_ignores_missing:
        extra = tuple(e for e in extra if e != "--ignore-missing-args")
    return (
        ("rsync", "-a", "--no-owner", "--no-group")
        + (("-s",) if flags.protect_args else ("--old-args",) if flags.old_args else ())
        + (("--info=progress2", "--no-inc-recursive") if flags.progress2 else ())
        # The job's own partial dir name (``partial_dir_for``) unless told otherwise.
        + ((f"--partial-dir={options.partial_dir if partial_dir == PARTIAL_DIR else partial_dir}",)
           if partial_dir else ())
        + ((f"--timeout={options.rsync_io_timeout_s}",) if options.rsync_io_timeout_s else ())
        + ((f"--bwlimit={options.bwlimit_kib_s}",) if options.bwlimit_kib_s else ())
        + (("-e", rsh) if rsh else ())
        + ((f"--rsync-path={rsync_path}",) if rsync_path and rsh else ())
        + extra
        + ("--", endpoint_arg(source, quote=quote),
           endpoint_arg(target, trailing_slash=not as_file, quote=quote))
    )


# Only directories: after unzip into a folder that already existed, this restores the
# mode and mtime of directories unzip did not create (it only sets those it creates).
DIRECTORIES_ONLY = ("--include=*/", "--exclude=*")


def files_from_args(list_file: Path) -> tuple[str, ...]:
    """Options for an rsync that carries only the files named in ``list_file`` (DIRECT's
    streams), each line ``<source basename>/<rel path>`` relative to the source's parent.

    - ``--files-from --from0``: NUL-separated names, read locally by the sending rsync,
      so no name passes through a shell or an option parser; implies ``--relative``,
      so ``<basename>/<rel>`` lands at ``target/<basename>/<rel>``;
    - ``--no-implied-dirs``: a stream never sets a directory's mode or mtime (a
      read-only folder made so by one stream would refuse another stream's files);
      missing folders are created with default modes and the final full pass gives
      every folder its own;
    - ``--ignore-missing-args``: a file deleted since the listing is skipped, as one
      rsync of the whole tree would never have seen it (verification decides).
    """
    return (f"--files-from={list_file}", "--from0", "--no-implied-dirs",
            "--ignore-missing-args")


_PROGRESS2 = re.compile(
    r"^\s*(?P<bytes>[\d,.']+)\s+(?P<pct>\d{1,3})%\s+\S+\s+\d+:\d{2}:\d{2}"
    r"(?:\s+\(xfr#(?P<xfr>\d+),\s*(?:to|ir)-chk=(?P<left>\d+)/(?P<total>\d+)\))?"
)


@dataclass(frozen=True)
class Progress2:
    bytes_done: int
    percent: int
    files_transferred: int | None
    to_check: int | None
    total_entries: int | None


def parse_progress2(line: str) -> Progress2 | None:
    """Parse one ``--info=progress2`` line, or None if the line is something else."""
    match = _PROGRESS2.match(line)
    if not match:
        return None
    digits = re.sub(r"\D", "", match["bytes"])
    if not digits:
        return None
    return Progress2(
        bytes_done=int(digits),
        percent=int(match["pct"]),
        files_transferred=int(match["xfr"]) if match["xfr"] else None,
        to_check=int(match["left"]) if match["left"] else None,
        total_entries=int(match["total"]) if match["total"] else None,
    )


def run_rsync(
    source: Endpoint,
    target: Endpoint,
    options: EngineOptions,
    *,
    phase: str = "send",
    bytes_total: int | None = None,
    files_total: int | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: CancelToken | None = None,
    partial_dir: str | None = PARTIAL_DIR,
    extra: tuple[str, ...] = (),
    rsync_path: str | None = None,
    as_file: bool = False,
) -> tuple[CommandResult, tuple[str, ...]]:
    """Run rsync, feeding progress; raise a typed error on failure, return warnings."""
    remote = source if isinstance(source, SshEndpoint) else target
    flags = rsync_flags(remote if isinstance(remote, SshEndpoint) else None, options, cancel)
    argv = build_argv(source, target, options, partial_dir=partial_dir, extra=extra,
                      rsync_path=rsync_path, as_file=as_file, flags=flags)

    def on_line(line: str) -> None:
        if progress is None:
            return
        parsed = parse_progress2(line)
        if parsed is None:
            return
        total = bytes_total
        if total is None:  # unknown source size (remote source): estimate from percent
            total = parsed.bytes_done * 100 // parsed.percent if parsed.percent else 0
        progress(Progress(phase, min(parsed.bytes_done, total) if total else parsed.bytes_done,
                          total, parsed.files_transferred, files_total))

    result = run_command(argv, cancel=cancel, on_stdout_line=on_line, what="rsync")
    warnings = raise_for_result(result)
    return result, warnings
