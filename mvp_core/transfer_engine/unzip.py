"""unzip (Info-ZIP): argv, where it runs (here or over ssh), exit-code interpretation.

``LC_ALL=C.UTF-8`` so names flagged UTF-8 in the archive are written as UTF-8 (under
the C locale unzip drops or escapes them): ``env`` here, set by the chunk script on a
remote host (which need not have ``env``); ``-o`` overwrites what a previous
attempt left; ``-q`` keeps output small; ``-^`` keeps control characters (tab,
newline) in names instead of silently dropping them; ``-K`` keeps setuid/setgid/sticky
bits as rsync -a does. The same argv runs locally or as one shlex-joined remote command.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path, PurePosixPath

from mvp_core.transfer_engine import remote_sh
from mvp_core.transfer_engine.endpoints import SshEndpoint
from mvp_core.transfer_engine.errors import (
    CommandFailedError,
    NoSpaceError,
    RemoteCommandMissingError,
    TargetNotWritableError,
)
from mvp_core.transfer_engine.manifest import FILE, Manifest
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.results import CancelToken
from mvp_core.transfer_engine.runner import CommandResult, run_command
from mvp_core.transfer_engine.ssh import (
    SSH_FAILED,
    missing_command,
    raise_for_remote,
    remote_command_argv,
    run_remote,
)
from mvp_core.transfer_engine.verify import parse_find_output

OK, WARNING, ERROR = "ok", "warning", "error"

# Info-ZIP unzip's documented exit codes: (meaning, outcome, transient).
UNZIP_EXIT_CODES: dict[int, tuple[str, str, bool]] = {
    0: ("success", OK, False),
    1: ("warnings (processing completed)", WARNING, False),
    2: ("generic error in the zip file format", ERROR, False),
    3: ("severe error in the zip file format", ERROR, False),
    4: ("unable to allocate memory", ERROR, True),
    5: ("unable to allocate memory or obtain a tty", ERROR, True),
    6: ("unable to allocate memory during decompression to disk", ERROR, True),
    7: ("unable to allocate memory during in-memory decompression", ERROR, True),
    9: ("the zip file was not found", ERROR, True),
    10: ("invalid options on the command line", ERROR, False),
    11: ("no matching files were found", ERROR, False),
    50: ("the disk is (or was) full during extraction", ERROR, False),
    51: ("the end of the zip archive was encountered prematurely", ERROR, True),
    80: ("interrupted by the user", ERROR, True),
    81: ("unsupported compression method or decryption", ERROR, False),
    82: ("no files found due to bad decryption password", ERROR, False),
}
_NO_SPACE = re.compile(r"No space left on device|disk full|write error", re.IGNORECASE)
_REFUSED = re.compile(r"Permission denied|Read-only file system|checkdir error", re.IGNORECASE)


def unzip_argv(zip_path: str, dest_dir: str, *, remote: bool = False) -> tuple[str, ...]:
    """unzip's argv; ``remote``: without ``env`` (the remote script sets the locale)."""
    return ((() if remote else ("env", "LC_ALL=C.UTF-8"))
            + ("unzip", "-^", "-K", "-q", "-o", zip_path, "-d", dest_dir))


def raise_for_unzip(result: CommandResult, where: str) -> tuple[str, ...]:
    """Typed error for a failed unzip; warnings for exit 1 (verification follows anyway)."""
    meaning, outcome, transient = UNZIP_EXIT_CODES.get(
        result.exit_code, ("unknown unzip exit code", ERROR, False))
    if outcome == OK:
        return ()
    if outcome == WARNING:
        return (f"unzip on {where} exit {result.exit_code}: {meaning}",)
    evidence = result.evidence()
    output = f"{result.stderr_tail}\n{result.stdout_tail}"
    if result.exit_code == 50 or _NO_SPACE.search(output):
        raise NoSpaceError(f"no space left on {where} while unzipping", **evidence)
    cmd = missing_command(result.exit_code, result.stderr_tail)
    if cmd:
        raise RemoteCommandMissingError(f"{cmd} is not installed on {where}", **evidence)
    if _REFUSED.search(output):
        raise TargetNotWritableError(f"unzip cannot write the target on {where}", **evidence)
    raise CommandFailedError(f"unzip on {where}: {meaning}", transient=transient, **evidence)


def run_unzip_local(zip_path: str, dest_dir: str, *, cancel: CancelToken | None = None
                    ) -> tuple[str, ...]:
    result = run_command(unzip_argv(zip_path, dest_dir), cancel=cancel, what="unzip")
    return raise_for_unzip(result, "this machine")


def run_unzip_chunk_remote(endpoint: SshEndpoint, zip_path: str, dest_dir: str, marker: str,
                           options: EngineOptions, *, cancel: CancelToken | None = None
                           ) -> tuple[str, ...]:
    """unzip one chunk remotely; on success write ``marker`` and remove the zip there."""
    remote = ("sh", "-c", remote_sh.UNZIP_CHUNK, "sh", zip_path, marker,
              *unzip_argv(zip_path, dest_dir, remote=True))
    result = run_command(remote_command_argv(endpoint, remote, options), cancel=cancel,
                         what="unzip", stdin_pipe=True)
    if result.exit_code == SSH_FAILED:
        raise_for_remote(result, endpoint, "unzip")
    if result.exit_code == remote_sh.MARKER_FAILED:
        raise TargetNotWritableError(f"cannot record the extracted chunk on {endpoint.host}",
                                     **result.evidence())
    return raise_for_unzip(result, endpoint.host)


# unzip writes each file under its real name. A file it could not finish is either
# still newer than the zip (killed before it restored the mtime) or, on a write error,
# closed with the source's mtime restored anyway ("probably truncated"). Either way its
# size differs from the manifest. Such files are removed so that nothing half-written
# passes for a real file (rsync keeps its partial files aside; unzip cannot). An older
# version of a file that unzip had not reached yet matches neither test and is kept.


def _unfinished(planned_size: int, planned_mtime_s: int, size: int, mtime_s: int,
                newer_than_zip: bool) -> bool:
    return size != planned_size and (newer_than_zip or mtime_s == planned_mtime_s)


def sweep_unfinished_local(dest: Path, manifest: Manifest, reference_zip: Path) -> list[str]:
    """Remove incomplete files an interrupted local unzip left in ``dest``."""
    try:
        ref_ns = os.stat(reference_zip).st_mtime_ns
    except OSError:
        return []
    removed = []
    for entry in manifest.entries:
        if entry.kind != FILE:
            continue
        path = dest / entry.rel_path
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and _unfinished(
                entry.size, entry.mtime_ns // 10**9, st.st_size, st.st_mtime_ns // 10**9,
                st.st_mtime_ns > ref_ns):
            path.unlink()
            removed.append(entry.rel_path)
    return removed


def sweep_unfinished_remote(endpoint: SshEndpoint, dest: PurePosixPath, manifest: Manifest,
                            reference_zip: PurePosixPath, options: EngineOptions) -> list[str]:
    """Remove incomplete files an interrupted remote unzip left in ``dest`` (two ssh calls).

    "Newer than the zip" is decided by the remote ``find -newer`` so clock skew between
    the hosts cannot matter (``remote_sh.UNFINISHED_FILES``, GNU or BSD).
    """
    listing = run_remote(endpoint, ("sh", "-c", remote_sh.UNFINISHED_FILES, "sh", str(dest),
                                    str(reference_zip)),
                         options, what="look for unfinished files", check=False,
                         capture_stdout=True)
    if listing.exit_code != 0:
        return []
    newer_part, _, tree_part = listing.stdout.partition(b"END\0")
    newer = {os.fsdecode(r)[2:] for r in newer_part.split(b"\0") if r}
    tree = parse_find_output(tree_part)
    planned = {e.rel_path: e for e in manifest.entries if e.kind == FILE}
    doomed = []
    for rel, stamp in tree.stamps.items():
        entry = planned.get(rel)
        size, mtime, _ino = stamp.split("/")
        if entry is not None and _unfinished(entry.size, entry.mtime_ns // 10**9, int(size),
                                             int(float(mtime)), rel in newer):
            doomed.append(entry.rel_path)
    if doomed:
        run_remote(endpoint, ("rm", "-f", "--", *(str(dest / rel) for rel in doomed)), options,
                   what="remove unfinished files")
    return doomed
