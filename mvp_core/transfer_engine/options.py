"""Engine knobs, passed in by the caller (the engine never reads the environment)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EngineOptions:
    temp_dir: Path = Path("/tmp/ketter_tmp")
    remote_temp_dir: str = "/tmp/ketter_tmp"
    ssh_connect_timeout_s: int = 10
    # rsync --timeout: seconds without I/O before rsync gives up (0 = never).
    rsync_io_timeout_s: int = 120
    # rsync --bwlimit in KiB/s (0 = unlimited): for shared links, and for tests that
    # need a transfer slow enough to interrupt.
    bwlimit_kib_s: int = 0
    # Verify the destination against the source listing after a copy too (a move
    # always verifies before deleting anything).
    verify_copy: bool = True
    # One ssh connection per job: a master started for the job, every ssh of the job
    # (rsync's too) runs as a session over it (see ssh_master). False: one per command.
    ssh_multiplex: bool = True
    # Set by ssh_master.ssh_session for the length of one job, never by callers:
    # (the endpoint key the master serves, its control socket path).
    ssh_control: tuple[tuple[object, ...], str] | None = None
