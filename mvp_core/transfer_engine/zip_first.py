"""ZIP_FIRST: STORED zips built locally, each sent as one file, unzipped at the target.

The tree is split into chunks (``chunks``: whole files, about
``options.zip_chunk_bytes`` each; a tree under one chunk stays one zip) and the
chunks flow through a pipeline of threads: while chunks k and k+1 are sent, chunk k+2
is built and chunk k-1 is extracted. Phases, one event pair per chunk (details
``chunk``/``chunks``): ``zip`` (build in ``options.temp_dir``), ``send`` (rsync of
the zip into ``options.remote_temp_dir``; no such stage when the target is local;
detail ``as_is``: a file bigger than a chunk is not zipped, rsync sends the file
itself straight into the tree being written, resumable like DIRECT, and its chunk
marker is written once it is there: see ``chunks`` for why),
``unzip`` (remote over ssh, or local; on success the chunk's marker is written and its
zip removed, in the same ssh session). Then ``restore_directories`` (several chunks,
or a merge: one directories-only rsync gives every directory its mode and mtime),
``cleanup`` (temp zips removed on BOTH sides, also on failure or cancel; details
``chunks``, ``send_streams``, ``peak_sends`` (most sends seen at once), ``send_busy_s``
(wall time with at least one send running: the ``send`` phase timing sums the chunks'
sends, which overlap), ``peak_local_temp_bytes``, ``peak_remote_temp_bytes``),
``verify`` and, for a move, ``delete_source``.

Concurrent sends: one rsync is capped by one ssh channel's window (about 80 MB/s at
20 ms RTT) while two over the job's ssh master fill a gigabit link (109 MiB/s
measured), so up to ``send_streams(options)`` = min(``direct_streams``,
``MAX_SEND_STREAMS`` = 2) chunks are sent at once, each by its own rsync over the
shared master. A third stream would add at most the last ~5% of the link and cost a
fourth chunk of temp space on each side; ``direct_streams=1`` gives one send at a time.
On a long path (``path``: the job measured its RTT and needs several channels) as many
chunks are sent at once as DIRECT would run transfers, each on its own ssh connection
when the path needs separate ones, and the temp slots grow with them (S+1 per side).

Temp space: a zip is removed locally once sent and remotely once extracted, and a
stage waits for a free slot (``temp_slots``: S+1 zips per side with S sends, 2 for a
local target) before it makes a new one. Locally: the zip being built and the S being
sent (or waiting for a sender); remotely: the S being received and the one being
extracted (or waiting for it). With S=2: at most 3 chunks on each side.

Extraction runs in chunk order, whatever order the sends end in: so "extracted" is
always a prefix of the chunks (a retry resumes from the first chunk not extracted),
the last chunk (every directory entry, see ``chunks``) is extracted last, and a
sender takes a remote slot before it takes a chunk, so the chunk the extractor waits
for always holds a slot (no deadlock).

One failure or cancel stops every stage (their processes are killed through one
stop token), the temp zips go on both sides, and the first error (the cause) is
raised. ``unzip`` writes into the job's staging directory; after a transient failure
it is kept, with a marker per extracted chunk (``delivery.chunks_extracted``), and the
retry resumes from the first chunk not extracted.

Temp names derive from ``job_id`` so a retry replaces the previous attempt's zips
and ``cleanup_job_temp`` can find them after a crash.
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TypeVar

from mvp_core.transfer_engine import delivery as deliver
from mvp_core.transfer_engine import path as path_plan
from mvp_core.transfer_engine import preflight, remote_sh
from mvp_core.transfer_engine import streams as streams_plan
from mvp_core.transfer_engine.chunks import Chunk, ChunkPlan, plan_chunks
from mvp_core.transfer_engine.endpoints import Endpoint, LocalEndpoint, SshEndpoint
from mvp_core.transfer_engine.errors import (
    InvalidEndpointError,
    NoSpaceError,
    TargetNotWritableError,
    TransferCancelledError,
    TransferError,
    UnsupportedTreeError,
)
from mvp_core.transfer_engine.job import TransferJob
from mvp_core.transfer_engine.manifest import Manifest, build_manifest
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.planner import TransferPlan, TransferStrategy, zip_blocker
from mvp_core.transfer_engine.results import (
    CancelToken,
    PhaseCallback,
    Progress,
    ProgressCallback,
    TransferResult,
)
from mvp_core.transfer_engine.rsync import (
    DIRECTORIES_ONLY,
    files_from_args,
    partial_dir_for,
    run_rsync,
)
from mvp_core.transfer_engine.ssh import run_remote
from mvp_core.transfer_engine.ssh_master import job_ssh_endpoint, job_ssh_session
from mvp_core.transfer_engine.steps import (
    PhaseClock,
    check_job,
    diagnose_no_space,
)
from mvp_core.transfer_engine.unzip import (
    run_unzip_chunk_remote,
    run_unzip_local,
    sweep_unfinished_local,
    sweep_unfinished_remote,
)
from mvp_core.transfer_engine.verify import from_manifest
from mvp_core.transfer_engine.zipper import build_zip

_DEFAULT_OPTIONS = EngineOptions()
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9_.-]")
# unzip reads its archive argument as a wildcard pattern.
_UNZIP_WILDCARDS = re.compile(r"[*?\[\]]")
# Zips per side at once with one send at a time: one in flight (built / being sent,
# or sent / being extracted) and one ready for the next stage. A local target (no
# send stage) keeps this depth.
PIPELINE_DEPTH = 2
# Concurrent chunk sends at most (see the module doc for why 2).
MAX_SEND_STREAMS = 2
_POLL_S = 0.1
# An as-is chunk's rsync list, beside the zips: ketter-<job>+00003.files.
AS_IS_LIST_SUFFIX = ".files"

T = TypeVar("T")


def send_streams(options: EngineOptions, connections: int = 1) -> int:
    """How many chunks are sent at once: min(direct_streams, MAX_SEND_STREAMS), at least 1;
    on a long path (``path``: several connections) one per connection, each its own."""
    if connections > 1:
        return connections
    return max(1, min(options.direct_streams, MAX_SEND_STREAMS))


def temp_slots(options: EngineOptions, *, remote_target: bool, connections: int = 1) -> int:
    """Zips each side may hold at once: S being sent + one built / extracted."""
    return send_streams(options, connections) + 1 if remote_target else PIPELINE_DEPTH


def _stem(job_id: str, *, remote: bool = False) -> str:
    """``ketter-<job>``; on the target's side ``ketter-<job>=r``: the two temp dirs may be
    one folder (ssh to this very host, a shared /tmp), and a zip must never be its own
    copy. ``=`` and ``+`` never occur in a sanitised job id."""
    return f"ketter-{_UNSAFE_ID.sub('_', job_id)[:100] or 'job'}" + ("=r" if remote else "")


def zip_name(job_id: str, *, remote: bool = False) -> str:
    """Temp zip name of a one-chunk job: stable across retries, safe in a shell and for unzip."""
    return f"{_stem(job_id, remote=remote)}.zip"


def chunk_zip_name(job_id: str, index: int, count: int, *, remote: bool = False) -> str:
    """``ketter-<job>.zip`` for a one-chunk plan, ``ketter-<job>+00003.zip`` otherwise
    (``ketter-<job>=r...`` on the target's side).

    ``+`` never occurs in a sanitised job id, so no job's names match another's.
    """
    if count <= 1:
        return zip_name(job_id, remote=remote)
    return f"{_stem(job_id, remote=remote)}+{index:05d}.zip"


def local_zip_path(job: TransferJob, options: EngineOptions, index: int = 0,
                   count: int = 1) -> Path:
    return Path(options.temp_dir) / chunk_zip_name(job.job_id, index, count)


def remote_zip_path(job: TransferJob, options: EngineOptions, index: int = 0,
                    count: int = 1) -> PurePosixPath:
    return PurePosixPath(options.remote_temp_dir) / chunk_zip_name(job.job_id, index, count,
                                                                   remote=True)


def _is_job_zip(name: str, stem: str) -> bool:
    """A temp file of this job here: a zip, or an as-is chunk's rsync list."""
    return name == f"{stem}.zip" or (name.startswith(f"{stem}+")
                                      and name.endswith((".zip", AS_IS_LIST_SUFFIX)))


def cleanup_temp(job: TransferJob, options: EngineOptions, *,
                 marks: Endpoint | None = None) -> None:
    """Remove every temp zip of this job here and, for a remote target, on the target host.

    ``marks``: the chunk markers too (after success: the tree is complete).
    """
    stem = _stem(job.job_id)
    try:
        names = os.listdir(options.temp_dir)
    except FileNotFoundError:
        names = []
    for name in names:
        if _is_job_zip(name, stem):
            (Path(options.temp_dir) / name).unlink(missing_ok=True)
    if isinstance(job.target, SshEndpoint):
        run_remote(job.target, ("sh", "-c", remote_sh.REMOVE_TEMP_ZIPS, "sh",
                                options.remote_temp_dir,
                                _stem(job.job_id, remote=True),
                                "" if marks is None else str(marks.path)),
                   options, what="remove the temp zips")
    elif marks is not None:
        shutil.rmtree(marks.path, ignore_errors=True)


def _restore_directories(job: TransferJob, options: EngineOptions,
                         cancel: CancelToken | None) -> bool:
    """unzip sets mode and mtime only on directories it creates, when it creates them;
    one directories-only rsync sets them all once every chunk is in."""
    run_rsync(job.source, job.target, options, partial_dir=None, cancel=cancel,
              extra=DIRECTORIES_ONLY)
    return True


def _check_free_space(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise NoSpaceError(
            f"temp dir {directory} has {free} bytes free, the zip needs about {needed}")


def run_transfer_zip_first(
    plan: TransferPlan,
    *,
    options: EngineOptions = _DEFAULT_OPTIONS,
    progress: ProgressCallback | None = None,
    on_phase: PhaseCallback | None = None,
    cancel: CancelToken | None = None,
) -> TransferResult:
    """Zip locally (in chunks), send, unzip at the target, clean up, verify, (move) delete."""
    check_job(plan.job)  # before the ssh master: a refused job starts no process
    with job_ssh_session(plan.job, options, cancel) as session_options:
        return _run_zip_first(plan, options=session_options, progress=progress,
                              on_phase=on_phase, cancel=cancel)


def _run_zip_first(
    plan: TransferPlan,
    *,
    options: EngineOptions,
    progress: ProgressCallback | None,
    on_phase: PhaseCallback | None,
    cancel: CancelToken | None,
) -> TransferResult:
    started = time.monotonic()
    job = plan.job
    if not isinstance(job.source, LocalEndpoint):
        raise UnsupportedTreeError("ZIP_FIRST needs a local source: zips are built locally")
    if _UNZIP_WILDCARDS.search(str(options.temp_dir) + options.remote_temp_dir):
        raise InvalidEndpointError("temp dirs must not contain * ? [ ] (unzip wildcards)")
    manifest = plan.manifest if plan.manifest is not None else build_manifest(job.source.path)
    if not manifest.is_dir:
        raise UnsupportedTreeError("ZIP_FIRST needs a source directory, not a single file")
    blocker = zip_blocker(manifest)
    if blocker:
        raise UnsupportedTreeError(f"ZIP_FIRST cannot carry this tree: {blocker}")
    preflight.check_unzip(job, options, cancel)
    preflight.check_before_send(job, from_manifest(manifest), options, cancel)
    losses = preflight.fidelity_losses(manifest)
    options = dataclasses.replace(
        options, partial_dir=partial_dir_for(e.rel_path for e in manifest.entries))

    # Stages report from their own threads: callbacks are called one at a time.
    clock = PhaseClock(_serialised(on_phase))
    warnings: list[str] = list(losses)
    chunk_plan = plan_chunks(manifest, options.zip_chunk_bytes, root_name=job.source.name)
    remote_dir = PurePosixPath(options.remote_temp_dir)
    # Written into the staging dir (or, merging, into the existing tree): see delivery.
    # Kept after a transient failure: the retry resumes from the first chunk not extracted.
    # The target and the remote temp dir are prepared in the same round trip.
    delivery = deliver.prepare(job, options, cancel, resumable=True,
                               chunk_plan=chunk_plan.digest,
                               target_dirs=(remote_dir,) if job.target.is_remote else ())
    # A long path: the chunks go over as many separate connections as it needs.
    facts = (path_plan.plan_path(job.target, manifest.total_bytes, options, cancel)
             if isinstance(job.target, SshEndpoint) and chunk_plan.chunked else path_plan.LAN)
    # Its connections start now (their handshakes overlap the first zips); each sender
    # keeps its own for every chunk it sends.
    link_count = (min(send_streams(options, facts.channels), len(chunk_plan.chunks))
                  if facts.separate and not delivery.delivered else 0)
    with deliver.discard_on_failure(job, options, clock, cancel), \
            path_plan.open_slots(job_ssh_endpoint(job), options, link_count) as link:
        if not delivery.delivered:
            pipeline = _Pipeline(job, delivery, manifest, chunk_plan, delivery.extracted,
                                 options, clock, progress, cancel, facts.channels,
                                 separate=facts.separate, link=link)
            try:
                pipeline.run()
                if chunk_plan.chunked or delivery.in_place:
                    with clock.phase("restore_directories"):
                        _restore_directories(delivery.writing_job, options, cancel)
            except BaseException:
                # Failure or cancel: clean up, but never let a cleanup error hide the cause.
                try:
                    with clock.phase("cleanup", **pipeline.summary()) as info:
                        interrupted = pipeline.interrupted
                        if interrupted is not None:
                            try:
                                info["removed_unfinished"] = pipeline.sweep(interrupted)
                            except (TransferError, OSError) as exc:
                                info["sweep_error"] = str(exc)
                        cleanup_temp(job, options)
                except (TransferError, OSError):
                    pass
                raise
            warnings.extend(pipeline.warnings)
            try:
                with clock.phase("cleanup", **pipeline.summary()):
                    cleanup_temp(job, options, marks=delivery.marks)
            except (TransferError, OSError) as exc:
                warnings.append(f"temp zip not removed: {exc}")

        final = deliver.finish(delivery, options, clock, fallback=from_manifest(manifest),
                               cancel=cancel)
    return TransferResult(
        strategy=TransferStrategy.ZIP_FIRST,
        files_transferred=final.listing.n_files,
        bytes_transferred=final.listing.total_bytes,
        duration_s=time.monotonic() - started,
        phase_timings=dict(clock.timings),
        warnings=(*warnings, *clock.warnings),
        connections=(facts.channels if facts.separate else 1) if job.target.is_remote else 0,
        rtt_s=facts.rtt_s,
        files=final.files,
        algorithm=final.algorithm,
    )


def _serialised(callback: Callable[[T], None] | None) -> Callable[[T], None] | None:
    if callback is None:
        return None
    lock = threading.Lock()

    def call(value: T) -> None:
        with lock:
            callback(value)
    return call


@dataclasses.dataclass
class _Zip:
    """One built chunk zip on its way through the pipeline; for an as-is chunk
    (``Chunk.as_is``) ``local`` is the rsync list naming its one source file."""

    chunk: Chunk
    local: Path
    remote: PurePosixPath | None
    size: int
    entries: int

    @property
    def temp_bytes(self) -> int:
        """Temp space it holds on each side: its zip, or nothing for an as-is chunk."""
        return 0 if self.chunk.as_is else self.size


class _JobProgress:
    """One progress figure for the whole pipeline.

    Each stage's share done (zip, send, unzip; bytes of content) is summed, and the
    sum ``s`` (0..3) is reported as phase ``("zip", "send", "unzip")[i]`` at fraction
    ``s - i`` (``i = ceil(s) - 1``, so a stage's end reads as its 100%): a consumer that spans a job's percent over the three
    phases in that order (the worker) sees the mean of the stages, rising steadily.
    With one chunk this is exactly "each phase from 0 to its total, in turn".
    """

    def __init__(self, callback: ProgressCallback | None, plan: ChunkPlan,
                 done: frozenset[int]) -> None:
        self.callback = callback
        self.total = sum(c.content_bytes for c in plan.chunks)
        self.n_files = sum(c.n_files for c in plan.chunks)
        resumed = sum(c.content_bytes for c in plan.chunks if c.index in done)
        self.zipped = self.sent = self.extracted = resumed  # completed chunks
        self.zipping = 0  # the chunk being built
        self.sending: dict[int, int] = {}  # the chunks being sent, by index
        self.lock = threading.Lock()

    def zip(self, current: int, finished: bool = False) -> None:
        with self.lock:
            if finished:
                self.zipped += current
                self.zipping = 0
            else:
                self.zipping = current
        self._report()

    def send(self, chunk: int, current: int, finished: bool = False) -> None:
        """Chunk ``chunk`` has ``current`` bytes sent (content, its share of the zip)."""
        with self.lock:
            if finished:
                self.sent += current
                self.sending.pop(chunk, None)
            else:
                # Never below what this send already reported: the sum only rises.
                self.sending[chunk] = max(current, self.sending.get(chunk, 0))
        self._report()

    def unzip(self, chunk_bytes: int) -> None:
        with self.lock:
            self.extracted += chunk_bytes
        self._report()

    def _report(self) -> None:
        if self.callback is None:
            return
        with self.lock:
            total = self.total
            if total <= 0:
                return
            sending = sum(self.sending.values())
            shares = ((self.zipped + self.zipping) / total, (self.sent + sending) / total,
                      self.extracted / total)
            s = sum(min(max(x, 0.0), 1.0) for x in shares)
            stage = min(max(math.ceil(s) - 1, 0), 2)  # a stage's end is reported as its 100%
            fraction = min(s - stage, 1.0)
            self.callback(Progress(("zip", "send", "unzip")[stage], int(total * fraction),
                                   total, None, self.n_files))


class _Pipeline:
    """zip → send → unzip over chunks: one zip thread, S send threads, one unzip thread,
    bounded by slots (see the module doc)."""

    def __init__(self, job: TransferJob, delivery: deliver.Delivery, manifest: Manifest,
                 plan: ChunkPlan, done: frozenset[int], options: EngineOptions,
                 clock: PhaseClock, progress: ProgressCallback | None,
                 cancel: CancelToken | None, connections: int = 1, *,
                 separate: bool = False, link: path_plan.Slots | None = None) -> None:
        self.job = job
        self.delivery = delivery
        self.manifest = manifest
        self.plan = plan
        self.todo = [c for c in plan.chunks if c.index not in done]
        self.resumed = len(plan.chunks) - len(self.todo)
        self.options = options
        self.clock = clock
        self.progress = _JobProgress(_serialised(progress), plan, done)
        # Set by the first stage that fails; reads as set once the job's token is.
        self.stop = CancelToken(parent=cancel)
        self.remote = isinstance(job.target, SshEndpoint)
        self.streams = send_streams(options, connections) if self.remote else 0
        self.slots = temp_slots(options, remote_target=self.remote, connections=connections)
        self.connections = (connections if separate else 1) if self.remote else 0
        # Each sender its own ssh connection on a long path (``link``: one master per
        # sender, reused for each chunk); sessions on the job's master else (a LAN, or
        # one chunk: no link is opened for fewer than two).
        self.link = link
        self.local_slots = threading.Semaphore(self.slots)
        self.remote_slots = threading.Semaphore(self.slots)
        self.lock = threading.Lock()
        self.local_bytes = self.remote_bytes = 0
        self.peak_local = self.peak_remote = 0
        self.sends = self.peak_sends = 0  # sends running now, most at once
        self.send_busy_s = 0.0
        self._busy_since = 0.0
        self.errors: list[BaseException] = []
        self.warnings: list[str] = []
        # The chunk whose unzip started and did not finish (what a failure sweeps).
        self.interrupted: _Zip | None = None

    # ------------------------------------------------------------ bookkeeping

    def summary(self) -> dict[str, int | str]:
        with self.lock:
            busy = self.send_busy_s + (time.monotonic() - self._busy_since if self.sends
                                       else 0.0)
            return {"chunks": len(self.plan), "chunk_bytes": self.plan.chunk_bytes,
                    "plan": self.plan.digest, "chunks_resumed": self.resumed,
                    "send_streams": self.streams, "peak_sends": self.peak_sends,
                    "connections": self.connections,
                    "send_busy_s": round(busy, 3),
                    "peak_local_temp_bytes": self.peak_local,
                    "peak_remote_temp_bytes": self.peak_remote}

    def _account(self, *, local: int = 0, remote: int = 0) -> None:
        with self.lock:
            self.local_bytes += local
            self.remote_bytes += remote
            self.peak_local = max(self.peak_local, self.local_bytes)
            self.peak_remote = max(self.peak_remote, self.remote_bytes)

    def _sending(self, delta: int) -> None:
        with self.lock:
            now = time.monotonic()
            if self.sends == 0 and delta > 0:
                self._busy_since = now
            self.sends += delta
            if self.sends == 0:
                self.send_busy_s += now - self._busy_since
            self.peak_sends = max(self.peak_sends, self.sends)

    def _fail(self, exc: BaseException) -> None:
        with self.lock:
            self.errors.append(exc)
        self.stop.cancel()

    def _acquire(self, slots: threading.Semaphore) -> None:
        while not slots.acquire(timeout=_POLL_S):
            self._check_stop()

    def _get(self, inbox: queue.Queue[_Zip | None]) -> _Zip | None:
        while True:
            try:
                return inbox.get(timeout=_POLL_S)
            except queue.Empty:
                self._check_stop()

    def _check_stop(self) -> None:
        if self.stop.cancelled:
            raise TransferCancelledError("cancelled: another stage of the pipeline stopped")

    # ------------------------------------------------------------ the run

    def run(self) -> None:
        """Run every stage to the end; raise the first failure (the cause)."""
        if not self.todo:
            return
        self._check_space()
        built: queue.Queue[_Zip | None] = queue.Queue()
        sent: queue.Queue[_Zip | None] = queue.Queue()
        stages: list[tuple[str, Callable[[], None]]] = [("zip", lambda: self._build(built))]
        if self.remote:
            stages += [(f"send{i}", lambda i=i: self._send(built, sent, i))  # type: ignore[misc]
                       for i in range(self.streams)]
            stages += [("unzip", lambda: self._extract(sent))]
        else:
            stages += [("unzip", lambda: self._extract(built))]
        threads = [threading.Thread(target=self._guard, args=(fn,), name=f"ketter-{name}")
                   for name, fn in stages]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(_POLL_S)
        except BaseException as exc:  # KeyboardInterrupt here: stop the stages first
            self._fail(exc)
            for t in threads:
                t.join()
            raise
        if self.errors:
            raise self.errors[0]

    def _guard(self, stage: Callable[[], None]) -> None:
        try:
            stage()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self._fail(exc)

    def _check_space(self) -> None:
        directory = Path(self.options.temp_dir)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NoSpaceError(f"cannot create the temp dir {directory}: {exc}") from exc
        biggest = sorted((c.estimated_zip_bytes for c in self.todo if not c.as_is),
                         reverse=True)
        _check_free_space(directory, sum(biggest[:self.slots]))

    # ------------------------------------------------------------ the stages

    def _details(self, chunk: Chunk) -> dict[str, int]:
        return {"chunk": chunk.index, "chunks": len(self.plan)}

    def _build(self, outbox: queue.Queue[_Zip | None]) -> None:
        count = len(self.plan)
        for chunk in self.todo:
            if chunk.as_is:  # no zip: the send stage rsyncs the file itself
                self._check_stop()
                outbox.put(self._as_is(chunk))
                continue
            self._acquire(self.local_slots)
            self._check_stop()
            estimate = chunk.estimated_zip_bytes
            self._account(local=estimate)
            path = local_zip_path(self.job, self.options, chunk.index, count)

            def report(p: Progress) -> None:
                self.progress.zip(p.bytes_done)

            with self.clock.phase("zip", **self._details(chunk), files=chunk.n_files,
                                  bytes=chunk.content_bytes) as info:
                stats = build_zip(chunk.manifest(self.manifest), path,
                                  root_name=self.job.source.name, progress=report,
                                  cancel=self.stop, include_root=chunk.has_root)
                info.update(zip_bytes=stats.archive_bytes, entries=stats.entries)
            self._account(local=stats.archive_bytes - estimate)
            self.progress.zip(chunk.content_bytes, finished=True)
            remote = (remote_zip_path(self.job, self.options, chunk.index, count)
                      if self.remote else None)
            item = _Zip(chunk, path, remote, stats.archive_bytes, stats.entries)
            if not self.remote:
                self.progress.send(chunk.index, chunk.content_bytes, finished=True)  # "there"
            outbox.put(item)
        outbox.put(None)  # each sender puts it back for the next one

    def _as_is(self, chunk: Chunk) -> _Zip:
        """An as-is chunk's item: its rsync list (``--files-from``) written, nothing built."""
        (entry,) = chunk.entries
        path = local_zip_path(self.job, self.options, chunk.index,
                              len(self.plan)).with_suffix(AS_IS_LIST_SUFFIX)
        try:
            path.write_bytes(streams_plan.encode_list(self.job.source.name, [entry.rel_path]))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpaceError(f"no space for {path}: {exc}") from exc
            raise TransferError(f"cannot write {path}: {exc}") from exc
        self.progress.zip(chunk.content_bytes, finished=True)
        return _Zip(chunk, path, None, entry.size, 1)

    def _copy_as_is(self, item: _Zip, progress: Callable[[Progress], None] | None,
                    options: EngineOptions) -> None:
        """rsync an as-is chunk's file straight into the tree being written (resumable
        through rsync's partial dir, like DIRECT)."""
        parent = LocalEndpoint(Path(self.job.source.path).absolute().parent)
        _result, sent_warnings = run_rsync(
            parent, self.delivery.write_dir, options, bytes_total=item.size,
            files_total=1, progress=progress, cancel=self.stop,
            extra=files_from_args(item.local))
        self.warnings.extend(sent_warnings)

    def _send(self, inbox: queue.Queue[_Zip | None], outbox: queue.Queue[_Zip | None],
              sender: int = 0) -> None:
        """One of S senders: take a remote slot, then the next built chunk, rsync it."""
        assert isinstance(self.job.target, SshEndpoint)
        mine = (self.link.options_for(sender, self.options, self.stop) if self.link is not None
                else self.options)
        remote_tmp = dataclasses.replace(self.job.target,
                                         path=PurePosixPath(self.options.remote_temp_dir))
        while True:
            # Slot first: chunks are taken in order by slot holders only, so the chunk
            # the (in-order) extractor waits for always has a slot.
            self._acquire(self.remote_slots)
            item = self._get(inbox)
            if item is None:
                self.remote_slots.release()
                inbox.put(None)  # for the other senders
                return
            self._check_stop()
            self._account(remote=item.temp_bytes)
            index, content, size = item.chunk.index, item.chunk.content_bytes, max(item.size, 1)

            def report(p: Progress, index: int = index, content: int = content,
                       size: int = size) -> None:
                self.progress.send(index, content * min(p.bytes_done, size) // size)

            as_is = item.chunk.as_is
            self._sending(+1)
            try:
                with self.clock.phase("send", **self._details(item.chunk), bytes=item.size,
                                      as_is=as_is), \
                        diagnose_no_space(self.delivery.write_dir if as_is else remote_tmp,
                                          item.size, self.options):
                    if as_is:
                        self._copy_as_is(item, report, mine)
                    else:
                        # Sent under the target side's own name: the two temp dirs
                        # may be one folder (see _stem).
                        _result, sent_warnings = run_rsync(
                            LocalEndpoint(item.local),
                            dataclasses.replace(remote_tmp, path=item.remote),
                            mine,
                            bytes_total=item.size, files_total=1, progress=report,
                            cancel=self.stop, partial_dir=None, as_file=True)
                        self.warnings.extend(sent_warnings)
            finally:
                self._sending(-1)
            self.progress.send(index, content, finished=True)
            item.local.unlink(missing_ok=True)  # the zip, or an as-is chunk's list
            if not as_is:
                self._account(local=-item.size)
                self.local_slots.release()
            outbox.put(item)

    def _extract(self, inbox: queue.Queue[_Zip | None]) -> None:
        target = self.delivery.writing_job.target
        dest = str(target.path)
        marks = self.delivery.marks
        arrived: dict[int, _Zip] = {}  # sends end in any order; extraction is in order
        for chunk in self.todo:
            while chunk.index not in arrived:
                got = self._get(inbox)
                if got is not None:  # (the zip stage's end mark, for a local target)
                    arrived[got.chunk.index] = got
            item = arrived.pop(chunk.index)
            self._check_stop()
            marker = str(Path(str(marks.path)) / deliver.chunk_mark_name(self.plan.digest,
                                                                       item.chunk.index))
            if item.chunk.as_is:
                self._land_as_is(item, marker)
                continue
            self.interrupted = item
            with self.clock.phase("unzip", **self._details(item.chunk), entries=item.entries):
                if item.remote is not None:
                    assert isinstance(target, SshEndpoint)
                    self.warnings.extend(run_unzip_chunk_remote(
                        target, str(item.remote), dest, marker, self.options, cancel=self.stop))
                else:
                    self.warnings.extend(run_unzip_local(str(item.local), dest,
                                                         cancel=self.stop))
                    _mark_local(marker)
                    item.local.unlink(missing_ok=True)
            self.interrupted = None
            self.progress.unzip(item.chunk.content_bytes)
            if item.remote is not None:
                self._account(remote=-item.size)
                self.remote_slots.release()
            else:
                self._account(local=-item.size)
                self.local_slots.release()

    def _land_as_is(self, item: _Zip, marker: str) -> None:
        """An as-is chunk is in the tree once rsync is done: record it (a local target
        has no send stage, so rsync it first), then free its remote slot."""
        target = self.delivery.writing_job.target
        if isinstance(target, SshEndpoint):
            deliver.touch(dataclasses.replace(target, path=PurePosixPath(marker)), self.options,
                          what="record the sent chunk", cancel=self.stop)
            self.progress.unzip(item.chunk.content_bytes)
            self.remote_slots.release()
            return
        with self.clock.phase("send", **self._details(item.chunk), bytes=item.size,
                              as_is=True):
            self._copy_as_is(item, None, self.options)
        item.local.unlink(missing_ok=True)
        _mark_local(marker)
        self.progress.send(item.chunk.index, item.chunk.content_bytes, finished=True)
        self.progress.unzip(item.chunk.content_bytes)

    # ------------------------------------------------------------ after a failure

    def sweep(self, item: _Zip) -> list[str]:
        """Remove what an interrupted unzip of ``item`` left half-written (before its
        zip, the "newer than" reference, is removed)."""
        dest_root = self.delivery.writing_job.target
        name = self.job.source.name
        chunk_manifest = item.chunk.manifest(self.manifest)
        if isinstance(dest_root, SshEndpoint):
            assert item.remote is not None
            return sweep_unfinished_remote(dest_root, PurePosixPath(dest_root.path) / name,
                                           chunk_manifest, item.remote, self.options)
        return sweep_unfinished_local(Path(dest_root.path) / name, chunk_manifest, item.local)


def _mark_local(marker: str) -> None:
    try:
        with open(marker, "wb"):
            pass
    except OSError as exc:
        raise TargetNotWritableError(f"cannot record the extracted chunk: {exc}") from exc
