"""Steps both strategies share: phase timing, checks before any byte moves, target
preparation, free space.

Kept apart so ``direct`` and ``zip_first`` stay short and cannot drift on the rules
that protect data (verification and deletion live in ``integrity``).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shlex
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from mvp_core.transfer_engine import remote_sh
from mvp_core.transfer_engine.endpoints import Endpoint, LocalEndpoint, SshEndpoint
from mvp_core.transfer_engine.errors import (
    CommandFailedError,
    InvalidEndpointError,
    NoSpaceError,
    SourceMissingError,
    SshAuthError,
    TargetNotWritableError,
    TransferError,
)
from mvp_core.transfer_engine.job import TransferJob
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.results import CancelToken, PhaseCallback, PhaseEvent, PhaseSkipped
from mvp_core.transfer_engine.runner import CommandResult
from mvp_core.transfer_engine.ssh import raise_for_remote, run_remote
from mvp_core.transfer_engine.verify import TreeListing, list_tree


class PhaseClock:
    """Times phases and reports them as ``PhaseEvent``s (started / done / failed)."""

    def __init__(self, on_phase: PhaseCallback | None) -> None:
        self.on_phase = on_phase
        self.timings: dict[str, float] = {}
        # Things the job's result should say (a late cancel ignored, fidelity losses).
        self.warnings: list[str] = []
        # Phases of one name may run at once (ZIP_FIRST's concurrent sends): sums locked.
        self._timings_lock = threading.Lock()

    def _add(self, name: str, duration: float) -> None:
        with self._timings_lock:
            self.timings[name] = self.timings.get(name, 0.0) + duration

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def emit(self, event: PhaseEvent) -> None:
        if self.on_phase is not None:
            self.on_phase(event)

    @contextmanager
    def phase(self, name: str, **details: Any) -> Iterator[dict[str, Any]]:
        """Run a block as phase ``name``; the yielded dict adds details to the done event."""
        self.emit(PhaseEvent(name, "started", details=dict(details)))
        started = time.monotonic()
        extra: dict[str, Any] = {}
        try:
            yield extra
        except BaseException as exc:
            duration = time.monotonic() - started
            self._add(name, duration)
            status, why = (("skipped", {"reason": str(exc)}) if isinstance(exc, PhaseSkipped)
                           else ("failed", {"error": type(exc).__name__}))
            try:
                self.emit(PhaseEvent(name, status, duration, {**details, **extra, **why}))
            except Exception:  # noqa: BLE001, S110 - a callback must not hide the failure
                pass
            raise
        duration = time.monotonic() - started
        self._add(name, duration)
        self.emit(PhaseEvent(name, "done", duration, {**details, **extra}))


def check_job(job: TransferJob) -> None:
    """Refuse what no strategy can do safely, before any process starts.

    Two remote hosts cannot be joined by rsync; a source without a basename has no
    ``target/<basename>``; and a local destination that is the source itself or lies
    inside it would make a move delete what it just copied (the classic
    ``--remove-source-files`` disaster).
    """
    if job.source.is_remote and job.target.is_remote:
        raise InvalidEndpointError("source and target are both remote: run Ketter on one of them")
    for endpoint in (job.source, job.target):
        if isinstance(endpoint, SshEndpoint):
            check_ssh_files(endpoint)
    destination = destination_of(job)
    if isinstance(job.source, LocalEndpoint) and os.path.islink(job.source.path):
        # rsync would copy the link itself, not the session it points to.
        raise InvalidEndpointError(
            f"the source {job.source} is a symlink to {os.path.realpath(job.source.path)}: "
            "give the real path")
    if isinstance(job.source, LocalEndpoint) and isinstance(destination, LocalEndpoint):
        src = os.path.realpath(job.source.path)
        dst = os.path.realpath(destination.path)
        tgt = os.path.realpath(job.target.path)
        if dst == src:
            raise InvalidEndpointError(
                f"the destination {destination} is the source itself: nothing to do")
        for inner in (dst, tgt):
            if os.path.commonpath([src, inner]) == src:
                raise InvalidEndpointError(f"the target {job.target} is inside the source")


def check_ssh_files(endpoint: SshEndpoint) -> None:
    """A missing key or known_hosts file, said plainly instead of as ssh's "denied"."""
    for label, path in (("identity file", endpoint.identity_file),
                        ("known_hosts file", endpoint.known_hosts_file)):
        if path is not None and not os.access(path, os.R_OK):
            raise SshAuthError(f"ssh {label} not found or not readable: {path}")


def destination_of(job: TransferJob) -> Endpoint:
    """Where the source lands: ``target/<basename of source>``."""
    name = job.source.name
    if not name or name in (".", ".."):
        raise InvalidEndpointError(f"source has no usable basename: {job.source}")
    if isinstance(job.target, SshEndpoint):
        return dataclasses.replace(job.target, path=PurePosixPath(job.target.path) / name)
    return LocalEndpoint(Path(job.target.path) / name)


def list_source(job: TransferJob, options: EngineOptions,
                cancel: CancelToken | None = None) -> TreeListing:
    """A fresh listing of the source; ``SourceMissingError`` when it is not there."""
    listing = list_tree(job.source, options, cancel=cancel)
    if listing is None:
        raise SourceMissingError(f"source does not exist: {job.source}")
    return listing


def raise_for_prepare(result: CommandResult, target: SshEndpoint) -> None:
    """Typed error for a failed remote target preparation (exit 3: a directory of it
    could not be made or written)."""
    if result.exit_code == 3:
        if "No space left" in result.stderr_tail:
            raise NoSpaceError(f"no space to create the target {target}",
                               argv=result.argv, exit_code=3, stderr_tail=result.stderr_tail)
        raise TargetNotWritableError(f"target cannot be written: {target}",
                                     argv=result.argv, exit_code=3,
                                     stderr_tail=result.stderr_tail)
    raise_for_remote(result, target, "prepare the target")


def prepare_target(target: Endpoint, options: EngineOptions,
                   cancel: CancelToken | None = None, *,
                   also: tuple[PurePosixPath, ...] = (),
                   probe: str | None = None) -> bool:
    """Create the target directory if missing and check it can be written.

    ``also``: more directories on the same remote host (the remote temp dir), prepared
    over the same ssh connection: each connection costs round trips on a real link.
    ``probe``: a name inside the target; returns whether it already exists.
    """
    if isinstance(target, SshEndpoint):
        dirs = (str(target.path), *(str(d) for d in also))
        script = remote_sh.PREPARE_DIRS
        if probe is not None:
            script += f'; if [ -e "$1"/{shlex.quote(probe)} ]; then echo ketter:exists; fi'
        result = run_remote(target, ("sh", "-c", script, "sh", *dirs),
                            options, what="prepare the target", cancel=cancel, check=False)
        raise_for_prepare(result, target)
        return "ketter:exists" in result.stdout_tail.splitlines()
    path = Path(target.path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise NoSpaceError(f"no space to create the target {path}") from exc
        raise TargetNotWritableError(f"target cannot be created: {path} ({exc.strerror})") from exc
    if not path.is_dir():
        raise TargetNotWritableError(f"target is not a directory: {path}")
    if not os.access(path, os.W_OK | os.X_OK):
        raise TargetNotWritableError(f"target is not writable: {path}")
    return probe is not None and os.path.lexists(path / probe)


def free_bytes(directory: Endpoint, options: EngineOptions) -> int | None:
    """Bytes available to the receiving account in ``directory``; None if unknown."""
    if isinstance(directory, SshEndpoint):
        try:
            result = run_remote(directory, ("df", "-P", "-k", "--", str(directory.path)),
                                options, what="check free space", check=False)
        except TransferError:
            return None
        lines = result.stdout_tail.strip().splitlines()
        try:
            return int(lines[-1].split()[3]) * 1024 if result.exit_code == 0 else None
        except (IndexError, ValueError):
            return None
    try:
        return shutil.disk_usage(directory.path).free
    except OSError:
        return None


# rsync codes a full disk shows up as when the receiver's message is lost with the link.
_MAYBE_NO_SPACE = {11, 12, 23}


@contextmanager
def diagnose_no_space(receiving_dir: Endpoint, needed: int, options: EngineOptions
                      ) -> Iterator[None]:
    """Turn a vague rsync failure into ``NoSpaceError`` when the receiving side is full.

    A remote receiver's "No space left on device" can be lost when it exits; asking
    ``df`` afterwards keeps the error truthful (and not retried as transient).
    """
    try:
        yield
    except CommandFailedError as exc:
        if exc.exit_code in _MAYBE_NO_SPACE:
            free = free_bytes(receiving_dir, options)
            if free is not None and free < needed:
                raise NoSpaceError(
                    f"no space left on the receiving side: {free} bytes free in "
                    f"{receiving_dir}, {needed} needed", argv=exc.argv,
                    exit_code=exc.exit_code, stderr_tail=exc.stderr_tail) from exc
        raise
