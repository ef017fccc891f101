"""Run a plan with the strategy it names; clean a job's temp files after a crash.

The one dispatch point, so the worker, the CLI and the DKU never repeat
``if strategy == ZIP_FIRST`` themselves.
"""

from __future__ import annotations

import dataclasses

from mvp_core.transfer_engine import delivery, names
from mvp_core.transfer_engine.direct import cleanup_stream_lists, run_transfer
from mvp_core.transfer_engine.errors import SourceMissingError
from mvp_core.transfer_engine.job import TransferJob
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.planner import TransferPlan, TransferStrategy, decide_strategy
from mvp_core.transfer_engine.results import (
    CancelToken,
    PhaseCallback,
    ProgressCallback,
    TransferResult,
)
from mvp_core.transfer_engine.zip_first import cleanup_temp, run_transfer_zip_first

_DEFAULT_OPTIONS = EngineOptions()


def execute_plan(
    plan: TransferPlan,
    *,
    options: EngineOptions = _DEFAULT_OPTIONS,
    progress: ProgressCallback | None = None,
    on_phase: PhaseCallback | None = None,
    cancel: CancelToken | None = None,
) -> TransferResult:
    """DIRECT → ``run_transfer``; ZIP_FIRST → ``run_transfer_zip_first``. A source found
    missing is looked for once more under another Unicode normalisation (``names``)."""
    plan = dataclasses.replace(plan, job=names.resolve_local_target(plan.job))
    try:
        return _execute(plan, options=options, progress=progress, on_phase=on_phase,
                        cancel=cancel)
    except SourceMissingError:
        found = names.resolve_source(plan.job, options, cancel)
        if found is None:
            raise
    return _execute(decide_strategy(found, force=plan.strategy) if plan.manifest is not None
                    else dataclasses.replace(plan, job=found),
                    options=options, progress=progress, on_phase=on_phase, cancel=cancel)


def _execute(plan: TransferPlan, *, options: EngineOptions,
             progress: ProgressCallback | None, on_phase: PhaseCallback | None,
             cancel: CancelToken | None) -> TransferResult:
    if plan.strategy is TransferStrategy.ZIP_FIRST:
        return run_transfer_zip_first(plan, options=options, progress=progress,
                                      on_phase=on_phase, cancel=cancel)
    return run_transfer(plan.job, options=options, progress=progress, on_phase=on_phase,
                        cancel=cancel, manifest=plan.manifest)


def cleanup_job_temp(job: TransferJob, options: EngineOptions) -> None:
    """Remove this job's temp zips on both sides (e.g. after a worker died mid-job):
    the one-chunk zip and every chunk zip of the job, found by job id. A job's chunk
    markers live in its staging dir and stay for a retry (``discard_job_staging``).

    DIRECT's stream lists (local files) go too.

    Idempotent; raises ``SshAuthError``/``SshConnectionError`` if the target host
    cannot be reached, so the caller can record that the remote zip may remain.
    """
    cleanup_stream_lists(job, options)
    cleanup_temp(job, options)


def discard_job_staging(job: TransferJob, options: EngineOptions) -> bool:
    """Remove this job's staging directory ``TARGET/.ketter-<job>/`` (a job that ended
    FAILED or CANCELLED, or an orphan). An old tree a half-done ``replace`` had set
    aside is put back first. Idempotent; True when something was removed. Not for a
    job that will be retried: its retry resumes from the staging directory.
    """
    return delivery.discard(job, options)


def remove_staging_root(job: TransferJob, options: EngineOptions) -> bool:
    """After a DONE job is recorded: remove what its delivery left in the staging
    root (see ``EngineOptions.staging_cleanup_by_caller``). Best effort."""
    return delivery.remove_staging_root(job, options)
