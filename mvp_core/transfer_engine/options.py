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
    # What verification compares: "checksum" (every file's content hash on both sides,
    # read back from the target's disk) or "size" (names, kinds and sizes only: faster,
    # blind to same-size changes).
    verify: str = "checksum"
    # Also write an ASC MHL v2.0 generation into ``ascmhl/`` inside the delivered folder
    # (needs verify="checksum": the hashes come from verification). See ``mhl``.
    write_mhl: bool = False
    # One ssh connection per job: a master started for the job, every ssh of the job
    # (rsync's too) runs as a session over it (see ssh_master). False: one per command.
    ssh_multiplex: bool = True
    # Keep a job's master this many seconds after the job, for the process's next job
    # to the same host (see ssh_pool); 0 = one master per job, stopped with it.
    ssh_persist_s: float = 0.0
    # DIRECT: how many rsync streams share the work (files split by size so they end
    # together; one file is never split). 1 = one rsync, as before.
    direct_streams: int = 4
    # Long links (``path``): at most this many transfers at once (streams, byte ranges),
    # sized to the bandwidth-delay product of ``link_bytes_s`` and the measured RTT, each
    # its own ssh connection beyond one TCP window; 1 = every stream a session on the
    # job's one master and no ranges, as on a LAN.
    ssh_max_connections: int = 8
    # The link rate the connections are sized for (bytes/s): 1 gbit.
    link_bytes_s: int = 125_000_000
    # ZIP_FIRST: target size of one chunk (a zip of whole files); trees under it stay
    # one zip. Chunks are built, sent and extracted in a pipeline. 128 MiB: the lab's
    # MANY at 20 ms took 21.8 s with 128 MiB chunks, 22.0 s with 64, 25.8 s with 256
    # (fill and drain of the pipeline grow with the chunk; per-chunk costs with their count).
    zip_chunk_bytes: int = 128 * 1024 * 1024
    # True: ``delivery.finish`` leaves the job's staging root (by then only the
    # ``.ketter-delivered`` marker, and a tree ``replace`` set aside) for the caller to
    # remove with ``execute.remove_staging_root`` once it has RECORDED the job as done.
    # Until then a crash is still recognisable to a retry (the marker says the tree in
    # place is this job's), and the job's end is not held up by one more round trip.
    staging_cleanup_by_caller: bool = False
    # rsync's --partial-dir name; set per job by the engine (``rsync.partial_dir_for``)
    # so that no source entry is hidden by it.
    partial_dir: str = ".ketter-partial"
    # Set by ssh_master.ssh_session for the length of one job, never by callers:
    # (the endpoint key the master serves, its control socket path).
    ssh_control: tuple[tuple[object, ...], str] | None = None
