"""ZIP_FIRST: one STORED zip built locally, sent as one file, unzipped at the target.

Phases: ``zip`` (build in ``options.temp_dir``), ``send`` (rsync of the zip into
``options.remote_temp_dir``; skipped when the target is local), ``unzip`` (remote
over ssh, or local), ``cleanup`` (temp zips removed on BOTH sides, on success and on
failure or cancel), then ``verify`` and, for a move, ``delete_source``.
``unzip`` writes into the job's staging directory (emptied first: unzip restarts,
it does not resume), which is verified and then renamed into place (``delivery``).

Temp names derive from ``job_id`` so a retry replaces the previous attempt's zip
and ``cleanup_job_temp`` can find them after a crash.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import time
from pathlib import Path, PurePosixPath

from mvp_core.transfer_engine import delivery as deliver
from mvp_core.transfer_engine.endpoints import LocalEndpoint, SshEndpoint
from mvp_core.transfer_engine.errors import (
    InvalidEndpointError,
    NoSpaceError,
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
    ProgressCallback,
    TransferResult,
)
from mvp_core.transfer_engine.rsync import DIRECTORIES_ONLY, run_rsync
from mvp_core.transfer_engine.ssh import run_remote
from mvp_core.transfer_engine.ssh_master import job_ssh_session
from mvp_core.transfer_engine.steps import (
    PhaseClock,
    check_job,
    diagnose_no_space,
    prepare_target,
)
from mvp_core.transfer_engine.unzip import (
    run_unzip_local,
    run_unzip_remote,
    sweep_unfinished_local,
    sweep_unfinished_remote,
)
from mvp_core.transfer_engine.verify import from_manifest
from mvp_core.transfer_engine.zipper import build_zip

_DEFAULT_OPTIONS = EngineOptions()
_UNSAFE_ID = re.compile(r"[^A-Za-z0-9_.-]")
# unzip reads its archive argument as a wildcard pattern.
_UNZIP_WILDCARDS = re.compile(r"[*?\[\]]")
# Room for zip headers beyond the content (per entry ~ 200 bytes with zip64 extras).
_ZIP_OVERHEAD_PER_ENTRY = 256


def zip_name(job_id: str) -> str:
    """Temp zip name for a job: stable across retries, safe in a shell and for unzip."""
    return f"ketter-{_UNSAFE_ID.sub('_', job_id)[:100] or 'job'}.zip"


def local_zip_path(job: TransferJob, options: EngineOptions) -> Path:
    return Path(options.temp_dir) / zip_name(job.job_id)


def remote_zip_path(job: TransferJob, options: EngineOptions) -> PurePosixPath:
    return PurePosixPath(options.remote_temp_dir) / zip_name(job.job_id)


_REMOTE_CLEANUP = 'rm -f -- "$1" "$2"/."$3".*'  # the zip and any rsync temp of it


def cleanup_temp(job: TransferJob, options: EngineOptions) -> None:
    """Remove this job's temp zip here and, for a remote target, on the target host."""
    local = local_zip_path(job, options)
    local.unlink(missing_ok=True)
    if isinstance(job.target, SshEndpoint):
        remote = remote_zip_path(job, options)
        run_remote(job.target,
                   ("sh", "-c", _REMOTE_CLEANUP, "sh", str(remote), str(remote.parent),
                    remote.name),
                   options, what="remove the temp zip")


def _restore_directories(job: TransferJob, options: EngineOptions,
                         cancel: CancelToken | None) -> bool:
    """unzip sets mode and mtime only on directories it creates; when the destination
    already existed (a retry, a resend), one directories-only rsync sets the rest."""
    run_rsync(job.source, job.target, options, partial_dir=None, cancel=cancel,
              extra=DIRECTORIES_ONLY)
    return True


def _sweep(job: TransferJob, manifest: Manifest, options: EngineOptions) -> list[str]:
    """Remove what an interrupted unzip left half-written (before the zip is removed)."""
    name = job.source.name
    if isinstance(job.target, SshEndpoint):
        return sweep_unfinished_remote(job.target, PurePosixPath(job.target.path) / name,
                                       manifest, remote_zip_path(job, options), options)
    return sweep_unfinished_local(Path(job.target.path) / name, manifest,
                                  local_zip_path(job, options))


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
    """Zip locally, send one file, unzip at the target, clean up, verify, (move) delete."""
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

    clock = PhaseClock(on_phase)
    warnings: list[str] = []
    remote_zip = remote_zip_path(job, options)
    prepare_target(job.target, options, cancel,
                   also=(remote_zip.parent,) if job.target.is_remote else ())
    # Written into the staging dir (or, merging, into the existing tree): see delivery.
    delivery = deliver.prepare(job, options, cancel, resumable=False)
    wjob = delivery.writing_job
    existed = delivery.in_place
    with deliver.discard_on_failure(job, options, clock):
        if not delivery.delivered:
            zip_path = local_zip_path(job, options)
            unzip_started = False
            try:
                with clock.phase("zip", files=manifest.n_files, bytes=manifest.total_bytes) as info:
                    try:
                        zip_path.parent.mkdir(parents=True, exist_ok=True)
                    except OSError as exc:
                        raise NoSpaceError(f"cannot create the temp dir {zip_path.parent}: {exc}") \
                            from exc
                    _check_free_space(zip_path.parent, manifest.total_bytes
                                      + _ZIP_OVERHEAD_PER_ENTRY * (len(manifest.entries) + 1))
                    stats = build_zip(manifest, zip_path, root_name=job.source.name,
                                      progress=progress, cancel=cancel)
                    info.update(zip_bytes=stats.archive_bytes, entries=stats.entries)
                if isinstance(job.target, SshEndpoint):
                    remote_tmp = dataclasses.replace(job.target, path=remote_zip.parent)
                    with clock.phase("send", bytes=stats.archive_bytes), \
                            diagnose_no_space(remote_tmp, stats.archive_bytes, options):
                        _result, sent_warnings = run_rsync(
                            LocalEndpoint(zip_path), remote_tmp, options,
                            bytes_total=stats.archive_bytes, files_total=1,
                            progress=progress, cancel=cancel, partial_dir=None)
                        warnings.extend(sent_warnings)
                    unzip_started = True
                    with clock.phase("unzip", entries=stats.entries) as info:
                        warnings.extend(run_unzip_remote(job.target, str(remote_zip),
                                                         str(wjob.target.path), options,
                                                         cancel=cancel))
                        if existed:
                            info["directories_restored"] = _restore_directories(
                                wjob, options, cancel)
                else:
                    unzip_started = True
                    with clock.phase("unzip", entries=stats.entries) as info:
                        warnings.extend(run_unzip_local(str(zip_path), str(wjob.target.path),
                                                        cancel=cancel))
                        if existed:
                            info["directories_restored"] = _restore_directories(
                                wjob, options, cancel)
            except BaseException:
                # Failure or cancel: clean up, but never let a cleanup error hide the cause.
                try:
                    with clock.phase("cleanup") as info:
                        if unzip_started:
                            try:
                                info["removed_unfinished"] = _sweep(wjob, manifest, options)
                            except (TransferError, OSError) as exc:
                                info["sweep_error"] = str(exc)
                        cleanup_temp(job, options)
                except (TransferError, OSError):
                    pass
                raise
            try:
                with clock.phase("cleanup"):
                    cleanup_temp(job, options)
            except (TransferError, OSError) as exc:
                warnings.append(f"temp zip not removed: {exc}")

        final = deliver.finish(delivery, options, clock, fallback=from_manifest(manifest),
                               cancel=cancel)
    return TransferResult(
        strategy=TransferStrategy.ZIP_FIRST,
        files_transferred=final.n_files,
        bytes_transferred=final.total_bytes,
        duration_s=time.monotonic() - started,
        phase_timings=dict(clock.timings),
        warnings=tuple(warnings),
    )
