"""One ssh connection per job: a master for the job's length, every ssh rides it.

Why: a job runs 8-10 ssh commands (list, mkdir, staging, rsync, verify, rename,
cleanup); each fresh connection costs a TCP + key exchange + auth (~0.3-0.5 s),
which dominated small jobs. ``ssh_session`` starts ``ssh -M -N`` as a child of the
job's thread (no ``ControlPersist`` daemon: that one double-forks and would escape
PR_SET_PDEATHSIG and the cancel path), waits until its control socket appears
(ssh creates it only after authentication), and hands back options whose
``ssh_control`` makes ``ssh.ssh_base_argv`` add ``ControlPath=... ControlMaster=no``.
ssh falls back to its own connection if the socket is gone, so correctness never
depends on the master; if the master cannot start (auth refused, host down), the job
proceeds without it and its first real command reports the real error.
``start_master`` starts every master (the job's here, a long path's slots in
``path.open_slots``, the pool's in ``ssh_pool``) without waiting: ``Master.ready`` waits.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mvp_core.transfer_engine.endpoints import SshEndpoint
from mvp_core.transfer_engine.errors import TransferError
from mvp_core.transfer_engine.job import TransferJob
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.results import CancelToken
from mvp_core.transfer_engine.runner import start_background, stop_background
from mvp_core.transfer_engine.ssh import endpoint_key, ssh_base_argv

SOCKET_NAME = "cm"
DIR_PREFIX = "ketter-ssh-"
MAX_SOCKET_PATH = 100  # sun_path is 108 bytes; ssh appends a temp suffix while binding
_POLL_S = 0.01
_START_SLACK_S = 5.0


def master_argv(endpoint: SshEndpoint, options: EngineOptions, control_path: str
                ) -> tuple[str, ...]:
    """``ssh -M -N`` with the job's connection options; it never forks into a daemon."""
    plain = dataclasses.replace(options, ssh_control=None)
    return (*ssh_base_argv(endpoint, plain), "-M", "-N",
            "-o", f"ControlPath={control_path}", "-o", "ControlPersist=no",
            "--", endpoint.destination)


def job_ssh_endpoint(job: TransferJob) -> SshEndpoint | None:
    """The job's remote side, if any (a job has at most one)."""
    for endpoint in (job.source, job.target):
        if isinstance(endpoint, SshEndpoint):
            return endpoint
    return None


@contextmanager
def job_ssh_session(job: TransferJob, options: EngineOptions,
                    cancel: CancelToken | None = None) -> Iterator[EngineOptions]:
    """``ssh_session`` for the job's remote side; the options unchanged for a local job."""
    endpoint = job_ssh_endpoint(job)
    if endpoint is None:
        yield options
        return
    with ssh_session(endpoint, options, cancel) as session_options:
        yield session_options


@contextmanager
def ssh_session(endpoint: SshEndpoint, options: EngineOptions,
                cancel: CancelToken | None = None) -> Iterator[EngineOptions]:
    """Run the block over one ssh master to ``endpoint``; yields the options to use.

    Must be entered and left in the thread that runs the job's commands (the master
    dies with the thread that started it). On exit, success or not, the master is
    stopped and its private socket directory removed; with ``ssh_persist_s`` > 0 the
    process-wide pool (``ssh_pool``) keeps it that long for the next job instead.
    """
    if not options.ssh_multiplex or options.ssh_control is not None:
        yield options
        return
    if options.ssh_persist_s > 0:
        from mvp_core.transfer_engine.ssh_pool import shared_masters  # imports this module

        with shared_masters.session(endpoint, options, cancel) as pooled:
            yield pooled
        return
    master = start_master(endpoint, options)
    if master is None:
        yield options
        return
    try:
        control_path = master.ready(cancel)
        yield (options if control_path is None else dataclasses.replace(
            options, ssh_control=(endpoint_key(endpoint), control_path)))
    finally:
        master.stop()


@dataclasses.dataclass
class Master:
    """An ssh master started and not waited for yet, so its handshake overlaps other
    work; it dies with the thread that started it (PR_SET_PDEATHSIG)."""

    sock_dir: str
    control_path: str
    proc: subprocess.Popen[bytes]
    deadline: float  # monotonic: no socket by then, and the master is given up

    def ready(self, cancel: CancelToken | None = None) -> str | None:
        """Its control path once it listens (authenticated); None if it died, took too
        long or ``cancel`` fired first."""
        path = Path(self.control_path)
        while not path.is_socket():
            if (self.proc.poll() is not None or time.monotonic() >= self.deadline
                    or (cancel is not None and cancel.cancelled)):
                return None
            time.sleep(_POLL_S)
        return self.control_path

    def alive(self) -> bool:
        """Running, and listening or still within its time to start."""
        return self.proc.poll() is None and (Path(self.control_path).is_socket()
                                             or time.monotonic() < self.deadline)

    def stop(self) -> None:
        """End it and remove its socket dir."""
        stop_background(self.proc)
        shutil.rmtree(self.sock_dir, ignore_errors=True)


def start_master(endpoint: SshEndpoint, options: EngineOptions) -> Master | None:
    """Start an ssh master to ``endpoint`` now, without waiting for it; None (nothing
    left behind) when it cannot start. The caller stops it."""
    paths = private_control_path()
    if paths is None:
        return None
    sock_dir, control_path = paths
    deadline = time.monotonic() + options.ssh_connect_timeout_s + _START_SLACK_S
    try:
        proc = start_background(master_argv(endpoint, options, control_path))
    except TransferError:
        shutil.rmtree(sock_dir, ignore_errors=True)
        return None
    return Master(sock_dir, control_path, proc, deadline)


def private_control_path() -> tuple[str, str] | None:
    """A new socket dir of our own (mode 0700; stale ones of killed jobs swept) and the
    control path in it; None (nothing left behind) when none can be made or the path is
    too long for a unix socket. The caller removes the dir."""
    try:
        sock_dir = tempfile.mkdtemp(prefix=DIR_PREFIX)
        sweep_stale(Path(sock_dir).parent)
    except OSError:
        return None
    control_path = os.path.join(sock_dir, SOCKET_NAME)
    if len(os.fsencode(control_path)) > MAX_SOCKET_PATH:
        shutil.rmtree(sock_dir, ignore_errors=True)
        return None
    return sock_dir, control_path


def sweep_stale(parent: Path) -> list[str]:
    """Remove socket dirs left by killed processes (their master died with them, the
    finally never ran): those whose socket refuses connections. A live master's, or a
    dir whose master is still starting (no socket yet), is left alone."""
    removed: list[str] = []
    try:
        candidates = [p for p in parent.iterdir() if p.name.startswith(DIR_PREFIX)]
    except OSError:
        return removed
    for sock_dir in candidates:
        sock_path = sock_dir / SOCKET_NAME
        try:
            if sock_dir.stat().st_uid != os.getuid() or not sock_path.is_socket():
                continue
        except OSError:
            continue
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(sock_path))
                continue  # a live master
            except ConnectionRefusedError:
                pass
            except OSError:
                continue
        shutil.rmtree(sock_dir, ignore_errors=True)
        removed.append(sock_dir.name)
    return removed
