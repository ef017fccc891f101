"""DIRECT: rsync of the source into the target, in one or several streams. Knows
nothing of zip or thresholds.

Steps: list the source (fails early if missing; over ssh this also proves the key
and host key), create the target, rsync (phase ``send``) into the job's staging
directory, verify it, rename it into place (``delivery``), and for a move delete the
source only after the rename.

Streams (``options.direct_streams``, planned by ``streams.plan_streams``): the
source directory's files are split by size into N lists; N rsyncs run at once, each
``--files-from`` its list, all into the same staging tree. A local source pushes; an
ssh source (a pull) is listed once (the listing every job makes anyway) and split the
same way: the lists stay local and each rsync sends its own to the remote sender.
Then one final pass, the very rsync a single stream runs (``--delete`` included),
sends what the lists do not carry (directories, empty ones included, symlinks), gives
every directory its mode and mtime, removes strays (a killed rsync's temp file) and
finds the files already there. A single file, a tree too small for a second stream
(see ``streams``), or a merge into an existing tree (its folders may be read-only:
one rsync lends itself write access to them, a stream must not touch folder modes)
runs that one rsync alone, exactly as before.

As one job: progress is the sum of the streams' bytes, one cancel stops them all,
and the first stream to fail stops the others; its error (not the cancellations it
caused) is the one raised. ``--partial-dir`` keeps resumability: a retry splits the
same tree the same way and each rsync resumes its files from the staging tree.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from mvp_core.transfer_engine import capabilities, preflight, ranges
from mvp_core.transfer_engine import delivery as deliver
from mvp_core.transfer_engine import path as path_plan
from mvp_core.transfer_engine import streams as streams_plan
from mvp_core.transfer_engine.capabilities import rsync_flags
from mvp_core.transfer_engine.endpoints import Endpoint, LocalEndpoint, SshEndpoint
from mvp_core.transfer_engine.errors import TransferCancelledError, TransferError
from mvp_core.transfer_engine.job import TransferJob
from mvp_core.transfer_engine.manifest import FILE, Manifest
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.planner import TransferStrategy
from mvp_core.transfer_engine.results import (
    CancelToken,
    PhaseCallback,
    Progress,
    ProgressCallback,
    TransferResult,
)
from mvp_core.transfer_engine.rsync import files_from_args, partial_dir_for, run_rsync
from mvp_core.transfer_engine.ssh_master import job_ssh_endpoint, job_ssh_session
from mvp_core.transfer_engine.steps import (
    PhaseClock,
    check_job,
    diagnose_no_space,
    list_source,
)
from mvp_core.transfer_engine.streams import Stream
from mvp_core.transfer_engine.verify import TreeListing, from_manifest

_DEFAULT_OPTIONS = EngineOptions()
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9_.-]")


def run_transfer(
    job: TransferJob,
    *,
    options: EngineOptions = _DEFAULT_OPTIONS,
    progress: ProgressCallback | None = None,
    on_phase: PhaseCallback | None = None,
    cancel: CancelToken | None = None,
    manifest: Manifest | None = None,
) -> TransferResult:
    """Copy or move ``job.source`` to ``job.target/<basename>`` with rsync."""
    check_job(job)  # before the ssh master: a refused job starts no process
    # A push lists its source here, before any connection: to a host this process
    # measured lately as a long path, a big job starts its own connections beside the
    # job's master (``path.remembered``) instead of after the probe.
    listing = (from_manifest(manifest) if manifest is not None
               else list_source(job, options, cancel)
               if isinstance(job.source, LocalEndpoint) else None)
    endpoint = job_ssh_endpoint(job)
    early_count = _early_count(endpoint, listing, options)
    with path_plan.open_slots(endpoint, options, early_count) as early, \
            job_ssh_session(job, options, cancel) as session_options:
        return _run_transfer(job, options=session_options, progress=progress,
                             on_phase=on_phase, cancel=cancel, manifest=manifest,
                             listing=listing, early=early)


def _early_count(endpoint: SshEndpoint | None, listing: TreeListing | None,
                 options: EngineOptions) -> int:
    """Connections to start before the job's master: a big push to a host remembered as
    a long path, as many as its streams could use (one per stream's worth of bytes)."""
    facts = path_plan.remembered(endpoint)
    if (listing is None or facts is None or not facts.separate
            or listing.total_bytes < path_plan.PROBE_MIN_BYTES):
        return 0
    return min(_slots(options, facts.channels),
               max(2, listing.total_bytes // streams_plan.MIN_STREAM_BYTES))


def _run_transfer(
    job: TransferJob,
    *,
    options: EngineOptions,
    progress: ProgressCallback | None,
    on_phase: PhaseCallback | None,
    cancel: CancelToken | None,
    manifest: Manifest | None,
    listing: TreeListing | None,
    early: path_plan.Slots | None,
) -> TransferResult:
    started = time.monotonic()
    clock = PhaseClock(on_phase)
    source: TreeListing = listing if listing is not None else list_source(job, options, cancel)
    endpoint = job_ssh_endpoint(job)
    # A big job over ssh: the path measured (one round trip) while preflight looks at
    # the target (its own round trips), not after it.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ketter-path") as probe:
        measuring = probe.submit(path_plan.plan_path, endpoint, source.total_bytes, options, cancel)
        preflight.check_before_send(job, source, options, cancel)
        facts = measuring.result()
    for loss in preflight.fidelity_losses(manifest):
        clock.warn(loss)
    options = dataclasses.replace(options, partial_dir=partial_dir_for(source.entries))
    # The streams of a send into staging: split once, whichever way the target is looked at.
    # On a long path a big file goes as byte ranges, one connection each (``ranges``).
    pieces = split_job(job, source, options, facts.channels)
    plan = plan_job_streams(job, source, options, connections=facts.channels,
                            split=pieces)
    # The long path's own connections: those started early, else started now (their
    # handshakes overlap the look at the target below).
    count = _slot_count(plan, pieces, options, facts)
    with (contextlib.nullcontext(early) if early is not None and count
          else path_plan.open_slots(endpoint, options, count)) as slots:
        send = _Send(job, source, plan, options, clock, progress, cancel, started, facts, pieces,
                     slots)
        if _guard_worth(job, plan, options) and not pieces:
            try:
                return send.run(deliver.assume_fresh(job), guarded=True)
            except deliver.TargetNotFresh:
                pass  # not fresh: look properly (raises the right error, or resumes)
        # The target prepared, looked at and its staging root made: one round trip over ssh.
        delivery = deliver.prepare(job, options, cancel, resumable=True, target_dirs=())
        return send.run(delivery, guarded=False)


def _slot_count(plan: list[Stream], pieces: list[ranges.Range], options: EngineOptions,
                facts: path_plan.PathFacts) -> int:
    """Separate connections the send will use: one per worker, on a long path only."""
    if not facts.separate:
        return 0
    carried = len(pieces) + (0 if pieces and len(plan) == 1 else len(plan))
    return min(carried, _slots(options, facts.channels)) if carried > 1 else 0


def _guard_worth(job: TransferJob, plan: list[Stream], options: EngineOptions) -> bool:
    """Send before looking at the target (``delivery.assume_fresh``): over ssh, for a
    job one rsync carries, where the saved round trip is a visible share of the job.
    Only over a live master, which proved the host key and the login: without one the
    guarded rsync would be the job's first contact, and a refused key would read as a
    failed send (then a failed cleanup) instead of the one error before any phase."""
    return (isinstance(job.target, SshEndpoint) and isinstance(job.source, LocalEndpoint)
            and options.ssh_control is not None and len(plan) == 1)


@dataclasses.dataclass
class _Send:
    """One attempt's send, verify and delivery into a decided ``Delivery``."""

    job: TransferJob
    source: TreeListing
    staged_plan: list[Stream]  # plan_job_streams for a send into staging
    options: EngineOptions
    clock: PhaseClock
    progress: ProgressCallback | None
    cancel: CancelToken | None
    started: float
    facts: path_plan.PathFacts = path_plan.LAN
    pieces: list[ranges.Range] = dataclasses.field(default_factory=list)
    slots: path_plan.Slots | None = None

    def run(self, delivery: deliver.Delivery, *, guarded: bool) -> TransferResult:
        job, source, options, clock = self.job, self.source, self.options, self.clock
        warnings: tuple[str, ...] = ()
        used = 0
        sent_rate: float | None = None
        # A merge writes into existing files: never at offsets, one rsync as before.
        pieces = [] if delivery.in_place else self.pieces
        if pieces and options.verify != "checksum":
            # A range that never came leaves the right size: only content can tell.
            options = dataclasses.replace(options, verify="checksum", verify_copy=True)
        with deliver.discard_on_failure(job, options, clock, self.cancel):
            if not delivery.delivered:
                plan = (plan_job_streams(job, source, options, in_place=True)
                        if delivery.in_place else self.staged_plan)
                # With ranges, a lone rest stream is left to the final pass.
                plan = [] if pieces and len(plan) == 1 else plan
                lists, note = (_write_lists(job, plan, options)
                               if len(plan) > 1 or pieces else ([], None))
                if note is not None:
                    plan, pieces = [_one_rsync(source)], []
                used = len(plan) + len(pieces)
                # The staged tree is this job's alone: whatever an earlier attempt left
                # that the source lacks (a killed rsync's temp file) goes.
                # Merging, rsync's quick check (size + mtime) would skip a stale file of
                # the same size and time: with content verification it compares content.
                extra = (("--checksum",) if options.verify == "checksum" else ()
                         ) if delivery.in_place else ("--delete",)
                send_began = time.monotonic()
                try:
                    with clock.phase("send", files=source.n_files, bytes=source.total_bytes,
                                     streams=used, guarded=guarded,
                                     **self._path_details(used)) as info, \
                            diagnose_no_space(delivery.write_dir, source.total_bytes, options):
                        if used == 1 and not pieces:
                            warnings = self._one(delivery, extra, guarded)
                        else:
                            warnings = _run_streams(
                                job, plan, lists, delivery, options, extra=extra,
                                source=source, progress=self.progress, cancel=self.cancel,
                                info=info, slots=self.slots,
                                pieces=pieces, pool=_slots(options, self.facts.channels))
                        sent_rate = path_plan.rate(source.total_bytes,
                                                   time.monotonic() - send_began)
                        info["rate_bytes_s"] = sent_rate
                finally:
                    _remove(lists)
                if note is not None:
                    warnings = (note, *warnings)
            final = deliver.finish(delivery, options, clock, fallback=source,
                                   cancel=self.cancel)
        return TransferResult(
            strategy=TransferStrategy.DIRECT,
            files_transferred=final.listing.n_files,
            bytes_transferred=final.listing.total_bytes,
            duration_s=time.monotonic() - self.started,
            phase_timings=dict(clock.timings),
            warnings=(*warnings, *clock.warnings),
            streams=used,
            connections=self._connections(used),
            rtt_s=self.facts.rtt_s,
            send_rate_bytes_s=sent_rate,
            files=final.files,
            algorithm=final.algorithm,
        )

    def _connections(self, used: int) -> int:
        """ssh connections the send used at once: one per transfer on a long path (up to
        its slots), else the master."""
        if used == 0 or job_ssh_endpoint(self.job) is None:
            return 0
        if used > 1 and self.facts.separate:
            return min(used, _slots(self.options, self.facts.channels))
        return 1

    def _path_details(self, used: int) -> dict[str, object]:
        return {**self.facts.details(), "connections": self._connections(used)}

    def _one(self, delivery: deliver.Delivery, extra: tuple[str, ...], guarded: bool
             ) -> tuple[str, ...]:
        """The single rsync; behind the guard, its refusal becomes ``TargetNotFresh``."""
        try:
            _result, warnings = run_rsync(
                self.job.source, delivery.write_dir, self.options,
                bytes_total=self.source.total_bytes, files_total=self.source.n_files,
                progress=self.progress, cancel=self.cancel, extra=extra,
                rsync_path=deliver.guard_rsync_path(delivery) if guarded else None)
        except TransferError as exc:
            if guarded and deliver.GUARD_REFUSED in exc.stderr_tail:
                raise deliver.TargetNotFresh("the target is not fresh: looking first",
                                             stderr_tail=exc.stderr_tail) from exc
            raise
        return warnings


def _one_rsync(source: TreeListing) -> Stream:
    """The single-stream plan: no list, the plain rsync of the source sends it all."""
    return Stream((), source.total_bytes)


def _slots(options: EngineOptions, channels: int) -> int:
    """Transfers a job on a long path runs at once: one per channel it needs, and never
    fewer than the streams it would run on a LAN."""
    return max(channels, options.direct_streams)


def split_job(job: TransferJob, source: TreeListing, options: EngineOptions,
              connections: int) -> list[ranges.Range]:
    """The byte ranges of this job's big files on a path of several channels (not
    under a ``--bwlimit``: only rsync keeps to it; not to a host without ``dd``: its
    big files go whole, one stream each)."""
    remote = job_ssh_endpoint(job)
    if connections <= 1 or options.bwlimit_kib_s or remote is None:
        return []
    if not capabilities.of_host(remote, options).dd:
        return []
    files = [(rel, size) for rel, (kind, size) in source.entries.items() if kind == FILE]
    pieces, _whole = ranges.split(files, source.stamps, _slots(options, connections),
                                  min_range=ranges.MIN_RANGE)
    return pieces


def plan_job_streams(job: TransferJob, source: TreeListing, options: EngineOptions, *,
                     in_place: bool = False, connections: int = 1,
                     split: list[ranges.Range] | None = None) -> list[Stream]:
    """The streams this job's send runs: one unless the source directory (local, or on
    an ssh host: a pull, listed once by ``list_source``) is worth splitting and the
    tree is written into staging (not merged in place)."""
    if in_place or not source.is_dir:
        return [_one_rsync(source)]
    cut = {r.rel for r in split or ()}
    files = [(rel, size) for rel, (kind, size) in source.entries.items()
             if kind == FILE and rel not in cut]
    # A long path asks for as many streams as it has connections to fill.
    plan = streams_plan.plan_streams(files, max(options.direct_streams, connections),
                                     min_stream_bytes=streams_plan.MIN_STREAM_BYTES)
    return plan if len(plan) > 1 else [_one_rsync(source)]


# ---------------------------------------------------------------- stream list files


def _list_prefix(job: TransferJob) -> str:
    return f"ketter-{_UNSAFE_ID.sub('_', job.job_id)[:100] or 'job'}.stream"


def stream_list_path(job: TransferJob, options: EngineOptions, index: int) -> Path:
    """Where stream ``index`` of this job keeps its file list: stable across retries."""
    return Path(options.temp_dir).absolute() / f"{_list_prefix(job)}{index}.files"


def cleanup_stream_lists(job: TransferJob, options: EngineOptions) -> int:
    """Remove this job's stream lists (a killed worker's leftovers); how many went."""
    removed = 0
    try:
        prefix = _list_prefix(job)
        # prefix + digits only: job "a" must not take job "a.stream1"'s lists
        candidates = [p for p in Path(options.temp_dir).glob(f"{prefix}*.files")
                      if p.name[len(prefix):-len(".files")].isdigit()]
    except OSError:
        return 0
    for path in candidates:
        try:
            path.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def _write_lists(job: TransferJob, plan: list[Stream], options: EngineOptions,
                 ) -> tuple[list[Path], str | None]:
    """Write each stream's ``--files-from`` list; on failure, a warning instead (the
    job then runs one rsync, slower but whole)."""
    cleanup_stream_lists(job, options)
    paths: list[Path] = []
    try:
        Path(options.temp_dir).mkdir(parents=True, exist_ok=True)
        for index, files in enumerate(st.files for st in plan):
            path = stream_list_path(job, options, index)
            paths.append(path)
            path.write_bytes(streams_plan.encode_list(job.source.name, files))
    except OSError as exc:
        _remove(paths)
        return [], f"could not write the stream lists in {options.temp_dir} ({exc}): one stream"
    return paths, None


def _remove(paths: list[Path]) -> None:
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass


# ---------------------------------------------------------------- running the streams


class _Meter:
    """Adds the streams' progress into one ``Progress`` for the job (calls serialised:
    the caller's callback never runs in two threads at once)."""

    def __init__(self, plan: Sequence[Stream | ranges.Range], source: TreeListing,
                 progress: ProgressCallback | None) -> None:
        self.lock = threading.Lock()
        self.bytes = [0] * len(plan)
        self.files = [0] * len(plan)
        self.skipped = 0  # bytes of ranges an earlier attempt sent
        self.total = source.total_bytes
        self.files_total = source.n_files
        self.progress = progress
        self.final_bytes = self.final_files = 0

    def stream(self, index: int) -> ProgressCallback:
        def update(progress: Progress) -> None:
            with self.lock:
                self.bytes[index] = progress.bytes_done
                if progress.files_done is not None:
                    self.files[index] = progress.files_done
                self._emit(sum(self.bytes) + self.skipped)
        return update

    def range_(self, index: int) -> ranges.Report:
        def update(sent: int) -> None:
            with self.lock:
                self.bytes[index] = sent
                self._emit(sum(self.bytes) + self.skipped)
        return update

    def final_pass(self, p: Progress) -> None:
        with self.lock:
            # What the final pass itself had to send (0 and 0 when the streams did it all).
            self.final_bytes, self.final_files = p.bytes_done, p.files_done or 0
            self._emit(max(sum(self.bytes) + self.skipped, p.bytes_done))

    def _emit(self, done: int) -> None:
        if self.progress is not None:
            self.progress(Progress("send", min(done, self.total), self.total,
                                   sum(self.files), self.files_total))


def _run_streams(
    job: TransferJob,
    plan: list[Stream],
    lists: list[Path],
    delivery: deliver.Delivery,
    options: EngineOptions,
    *,
    extra: tuple[str, ...],
    source: TreeListing,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
    info: dict[str, object],
    slots: path_plan.Slots | None = None,
    pieces: list[ranges.Range] | None = None,
    pool: int = 1,
) -> tuple[str, ...]:
    """Run the streams (and byte ranges) at once, then the final full pass; returns
    rsync's warnings. ``slots``: each worker carries its items over its slot's own ssh
    connection (a long path) instead of sessions on the job's master; the final pass
    stays on the master.
    Ranges (``ranges``) share ``pool`` connections with the streams, largest first;
    those an earlier attempt finished are skipped."""
    write_dir = delivery.write_dir
    pieces = pieces or []
    done = (ranges.done_marks(delivery.root, options, cancel) if pieces and delivery.resumes
            else frozenset())
    todo = [r for r in pieces if r.mark not in done]
    items: list[Stream | ranges.Range] = sorted(
        [*plan, *todo], key=lambda item: -item.bytes)
    n = len(items)
    workers = max(1, min(n, max(pool, len(plan)) if pieces else n))
    meter = _Meter(items, source, progress)
    meter.skipped = sum(r.bytes for r in pieces if r.mark in done)
    stop = CancelToken(parent=cancel)  # the job's cancel, or a sibling's failure
    failures: list[BaseException] = []
    warnings: list[tuple[str, ...]] = [()] * n
    seconds = [0.0] * n
    # --bwlimit is per rsync: share the job's limit so N streams keep within it.
    each = (dataclasses.replace(options, bwlimit_kib_s=max(1, options.bwlimit_kib_s // workers))
            if options.bwlimit_kib_s else options)
    if slots is not None:  # learn the host's rsync once, over the master
        rsync_flags(slots.endpoint, options, cancel)
    parent = source_parent(job.source)
    list_of = {id(st): lists[i] for i, st in enumerate(plan)}
    queue = list(range(n))
    queue_lock = threading.Lock()

    def run_one(index: int, mine: EngineOptions) -> None:
        item = items[index]
        if isinstance(item, ranges.Range):
            report = meter.range_(index)
            ranges.send_range(item, job.source, delivery.staged, delivery.root, mine,
                              cancel=stop, report=report)
            return
        _result, warnings[index] = run_rsync(
            parent, write_dir, mine, bytes_total=item.bytes, files_total=item.n_files,
            progress=meter.stream(index), cancel=stop, extra=files_from_args(list_of[id(item)]))

    def work(slot: int) -> None:
        mine = slots.options_for(slot, each, stop) if slots is not None else each
        while not stop.cancelled:
            with queue_lock:
                if not queue:
                    return
                index = queue.pop(0)
            began = time.monotonic()
            try:
                run_one(index, mine)
            except BaseException as exc:  # noqa: BLE001 - handed to the job's thread below
                with meter.lock:
                    failures.append(exc)
                stop.cancel()
            finally:
                seconds[index] = round(time.monotonic() - began, 3)

    info.update(stream_files=[s.n_files for s in plan], stream_bytes=[s.bytes for s in plan])
    if pieces:
        info.update(ranges=len(pieces), ranges_resumed=len(pieces) - len(todo),
                    range_files=len(ranges.list_of(pieces)))
    threads = [threading.Thread(target=work, args=(i,), name=f"ketter-stream-{i}", daemon=True)
               for i in range(workers)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        # Only on an escape (KeyboardInterrupt): stop every stream and wait for its
        # rsync to be killed, so none outlives the job.
        if any(t.is_alive() for t in threads):
            stop.cancel()
            for thread in threads:
                if thread.ident is not None:
                    thread.join()
        where = {id(item): i for i, item in enumerate(items)}
        info["stream_s"] = [seconds[where[id(st)]] if id(st) in where else 0.0 for st in plan]
    if failures:
        raise _first_failure(failures, cancel)
    if cancel is not None and cancel.cancelled:
        raise TransferCancelledError("cancelled during the streams")

    began = time.monotonic()
    # Files sent as ranges have their bytes but not yet their mode and mtime: with
    # ``--size-only`` the final pass gives them these without a second rsync (each costs
    # several round trips on a long link). Safe because a job with ranges is always
    # content-verified before delivery: a file of the right size and wrong bytes fails it.
    final_extra = (*extra, "--size-only") if pieces else extra
    try:
        staged = delivery.staged
        if (isinstance(job.source, LocalEndpoint) and isinstance(staged, SshEndpoint)
                and not plan and not delivery.resumes and ranges.attributes_alone(source, pieces)):
            # Every file came as ranges into a new staging tree (nothing stray to remove):
            # only modes and times are left, one command, not an rsync pass.
            ranges.give_modes_and_times(Path(job.source.path), source, staged, options, cancel)
            last: tuple[str, ...] = ()
        else:
            _result, last = run_rsync(job.source, write_dir, options,
                                      bytes_total=source.total_bytes, files_total=source.n_files,
                                      progress=meter.final_pass, cancel=cancel, extra=final_extra)
    finally:
        info.update(final_pass_s=round(time.monotonic() - began, 3),
                    final_pass_bytes=meter.final_bytes, final_pass_files=meter.final_files)
    return tuple(dict.fromkeys(w for ws in (*warnings, last) for w in ws))


def source_parent(source: Endpoint) -> Endpoint:
    """The folder holding the source: each stream's list names ``<basename>/<rel>``
    relative to it. For a pull the list stays local: rsync sends it to the remote
    sender, so no name passes through the remote shell."""
    if isinstance(source, SshEndpoint):
        return dataclasses.replace(source, path=PurePosixPath(source.path).parent)
    return LocalEndpoint(Path(source.path).absolute().parent)


def _first_failure(failures: list[BaseException], cancel: CancelToken | None
                   ) -> BaseException:
    """The error to raise for the job: cancelled if the job was; otherwise the first
    stream's real failure, not the cancellations it caused its siblings."""
    cancelled = [f for f in failures if isinstance(f, TransferCancelledError)]
    if cancel is not None and cancel.cancelled:
        return cancelled[0] if cancelled else TransferCancelledError("cancelled during rsync")
    real = [f for f in failures if not isinstance(f, TransferCancelledError)]
    return real[0] if real else failures[0]
