"""DIRECT: one rsync of the source into the target. Knows nothing of zip or thresholds.

Steps: list the source (fails early if missing; over ssh this also proves the key
and host key), create the target, rsync (phase ``send``) into the job's staging
directory, verify it, rename it into place (``delivery``), and for a move delete the
source only after the rename.
"""

from __future__ import annotations

import time

from mvp_core.transfer_engine import delivery as deliver
from mvp_core.transfer_engine.job import TransferJob
from mvp_core.transfer_engine.manifest import Manifest
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.planner import TransferStrategy
from mvp_core.transfer_engine.results import (
    CancelToken,
    PhaseCallback,
    ProgressCallback,
    TransferResult,
)
from mvp_core.transfer_engine.rsync import run_rsync
from mvp_core.transfer_engine.ssh_master import job_ssh_session
from mvp_core.transfer_engine.steps import (
    PhaseClock,
    check_job,
    diagnose_no_space,
    list_source,
    prepare_target,
)
from mvp_core.transfer_engine.verify import TreeListing, from_manifest

_DEFAULT_OPTIONS = EngineOptions()


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
    with job_ssh_session(job, options, cancel) as session_options:
        return _run_transfer(job, options=session_options, progress=progress,
                             on_phase=on_phase, cancel=cancel, manifest=manifest)


def _run_transfer(
    job: TransferJob,
    *,
    options: EngineOptions,
    progress: ProgressCallback | None,
    on_phase: PhaseCallback | None,
    cancel: CancelToken | None,
    manifest: Manifest | None,
) -> TransferResult:
    started = time.monotonic()
    clock = PhaseClock(on_phase)
    source: TreeListing = (from_manifest(manifest) if manifest is not None
                           else list_source(job, options, cancel))
    prepare_target(job.target, options, cancel)
    delivery = deliver.prepare(job, options, cancel, resumable=True)
    warnings: tuple[str, ...] = ()
    with deliver.discard_on_failure(job, options, clock):
        if not delivery.delivered:
            with clock.phase("send", files=source.n_files, bytes=source.total_bytes), \
                    diagnose_no_space(delivery.write_dir, source.total_bytes, options):
                _result, warnings = run_rsync(
                    job.source, delivery.write_dir, options,
                    bytes_total=source.total_bytes, files_total=source.n_files,
                    progress=progress, cancel=cancel,
                    # The staged tree is this job's alone: whatever an earlier attempt
                    # left that the source lacks (a killed rsync's temp file) goes.
                    extra=() if delivery.in_place else ("--delete",),
                )
        final = deliver.finish(delivery, options, clock, fallback=source, cancel=cancel)
    return TransferResult(
        strategy=TransferStrategy.DIRECT,
        files_transferred=final.n_files,
        bytes_transferred=final.total_bytes,
        duration_s=time.monotonic() - started,
        phase_timings=dict(clock.timings),
        warnings=warnings,
    )
