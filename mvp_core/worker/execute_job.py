"""The arq job: run one Ketter job to a final state, whatever happens.

Safe to call more than once (arq may): a final job returns at once, a job
another live worker runs is left alone, and only an atomic claim in Postgres
makes a job RUNNING here.

Outcomes:
- DONE with files/bytes/duration + ``done`` event.
- FAILED with the error's evidence in an ``error`` event. Permanent errors fail at
  once; transient ones (``err.transient``) are retried with exponential backoff up
  to ``max_attempts``. **Between attempts the job is PENDING** (worker cleared) with
  a ``retry`` event, and arq holds it deferred (``Retry(defer=...)``).
- CANCELLED (``cancelled`` event) when the API asked: the engine stops its process,
  this job's temp files and staging directory are removed, the source is untouched.
  A job that ends FAILED loses its staging directory too; one that will be retried
  keeps it (the retry resumes from it). See docs/delivery.md.
- Worker shutdown (SIGTERM) stops the engine and puts the job back to PENDING; a
  crash (kill -9) is found by the reconciler through the missing heartbeat.
- Any other exception (a bug) still ends the job FAILED with an event.

Two jobs that write the same output never run together: an advisory lock on the
output path is taken before the claim; a job that finds it busy stays PENDING
and is retried after ``target_busy_retry_s``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import traceback
from dataclasses import dataclass
from typing import Any

from arq import Retry
from sqlalchemy.exc import DBAPIError

from mvp_core.db import repository as repo
from mvp_core.db.errors import KetterDbError, translate_db_error
from mvp_core.db.models import (
    FINAL_STATUSES,
    ChosenStrategy,
    EventLevel,
    EventType,
    Job,
    JobStatus,
    Portal,
    RequestedStrategy,
)
from mvp_core.transfer_engine.delivery import finish_interrupted_move
from mvp_core.transfer_engine.errors import TransferCancelledError, TransferError
from mvp_core.transfer_engine.execute import (
    cleanup_job_temp,
    execute_plan,
    remove_staging_root,
)
from mvp_core.transfer_engine.job import TransferJob
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.planner import TransferPlan, TransferStrategy, decide_strategy
from mvp_core.transfer_engine.results import CancelToken, TransferResult
from mvp_core.worker.job_mapping import clean_relative, output_lock_name, to_transfer_job
from mvp_core.worker.notify import notify_later
from mvp_core.worker.reporting import PhaseWriter, ProgressWriter
from mvp_core.worker.staging import discard_and_log
from mvp_core.worker.state import WorkerState
from mvp_core.worker.target_lock import TargetLock

log = logging.getLogger(__name__)

CANCEL_POLL_S = 0.5
MAX_BACKOFF_S = 600.0
SHUTDOWN_WAIT_S = 30.0

_FORCED = {
    RequestedStrategy.DIRECT: TransferStrategy.DIRECT,
    RequestedStrategy.ZIP_FIRST: TransferStrategy.ZIP_FIRST,
}


@dataclass(frozen=True)
class Snapshot:
    """A job and its portals, loaded once and detached from the session."""

    job: Job
    source: Portal
    target: Portal
    running_elsewhere: bool


def _load(session: Any, job_id: int, grace_s: float) -> Snapshot | None:
    job = session.get(Job, job_id)
    if job is None:
        return None
    elsewhere = job.status is JobStatus.RUNNING and repo.worker_alive(
        session, worker_id=job.worker_id, grace_s=grace_s
    )
    return Snapshot(job, job.source_portal, job.target_portal, elsewhere)


LATE_CANCEL = "cancel arrived after the tree was put in place"


class _Stop(Exception):
    """Why the engine was asked to stop, when it was not the user."""


class JobRun:
    def __init__(self, state: WorkerState, job_id: int) -> None:
        self.state = state
        self.settings = state.settings
        self.job_id = job_id
        # The staging root (the delivered marker) goes only after DONE is recorded: a
        # worker killed in between leaves a retry the proof that the tree is this job's.
        self.options: EngineOptions = dataclasses.replace(
            self.settings.engine_options(), staging_cleanup_by_caller=True)
        self.timed_out = False

    # ------------------------------------------------------------------ entry point

    async def run(self) -> str:
        self.state.active_jobs.add(self.job_id)
        try:
            return await self._run()
        finally:
            self.state.active_jobs.discard(self.job_id)

    async def _run(self) -> str:
        snap = await self.state.db(
            lambda s: _load(s, self.job_id, self.settings.heartbeat_grace_s)
        )
        if snap is None:
            return "no such job"
        if snap.running_elsewhere:
            return "running on another live worker"
        if snap.job.site is not None and snap.job.site != self.state.site:
            # Not this site's disks: left alone (its site's reconciler queues it there).
            return f"a job of site {snap.job.site!r}, not {self.state.site!r}"
        if snap.job.status is JobStatus.RUNNING and not self.state.trusts_heartbeats():
            # Its worker looks dead, but our own view of heartbeats is too fresh to judge.
            raise Retry(defer=self.settings.heartbeat_grace_s)
        job = snap.job
        if job.status in FINAL_STATUSES:
            if job.status is not JobStatus.DONE and job.attempts > 0:
                await self._cleanup_best_effort(snap)  # ended while its worker was dead
            notify_later(self.state, self.job_id)  # ended by the API or the reconciler
            return f"already {job.status.value}"
        lock = TargetLock(self.state.engine, self._lock_name(snap))
        if not await asyncio.to_thread(lock.try_acquire):
            await self._note_target_busy()
            raise Retry(defer=self.settings.target_busy_retry_s)
        try:
            claim = await self.state.db(self._claim)
            if claim is None:
                return "not claimable (cancelled, or running on a live worker)"
            if isinstance(claim, repo.PortalLimit):
                raise Retry(defer=self.settings.target_busy_retry_s)
            return await self._attempt(snap, claim)
        finally:
            await asyncio.to_thread(lock.release)

    def _lock_name(self, snap: Snapshot) -> str:
        try:
            source_rel = clean_relative(snap.job.source_path, what="source_path")
            target_rel = clean_relative(snap.job.target_path, what="target_path",
                                        allow_empty=True)
        except ValueError:
            return f"job:{snap.job.id}"  # refused later, with the reason, by the mapping
        return output_lock_name(source_rel=source_rel, target_portal=snap.target,
                                target_rel=target_rel)

    async def _note_target_busy(self) -> None:
        def note(s: Any) -> None:
            last = repo.last_event(s, job_id=self.job_id)
            if last is not None and last.payload.get("reason") == "target_busy":
                return
            repo.add_event(
                s, job_id=self.job_id, event_type=EventType.QUEUED,
                message="waiting: another job is writing the same target",
                payload={"reason": "target_busy"},
            )
        await self.state.db(note)

    def _claim(self, session: Any) -> repo.Claim | repo.PortalLimit | None:
        """Claim the job, unless a portal it uses is at its limit (then note why it
        waits, once, and leave it PENDING)."""
        limit = repo.portal_limit_reached(session, job_id=self.job_id)
        if limit is not None:
            last = repo.last_event(session, job_id=self.job_id)
            if last is None or last.payload.get("reason") != "portal_limit":
                repo.add_event(
                    session, job_id=self.job_id, event_type=EventType.QUEUED,
                    message=f"waiting: portal {limit.name!r} runs its limit of {limit.limit} "
                            f"job(s) ({limit.running} running, {limit.ahead} ahead in line)",
                    payload={"reason": "portal_limit", "portal_id": limit.portal_id,
                             "limit": limit.limit},
                )
            return limit
        claim = repo.claim_job(
            session, job_id=self.job_id, worker_id=self.state.worker_id,
            grace_s=self.settings.heartbeat_grace_s,
        )
        if claim is None:
            return None
        if claim.previous_worker_id:
            repo.add_event(
                session, job_id=self.job_id, event_type=EventType.RECOVERED,
                level=EventLevel.WARNING,
                message=f"taken over from worker {claim.previous_worker_id}, which stopped "
                        "heart-beating",
                payload={"dead_worker_id": claim.previous_worker_id},
            )
        repo.add_event(
            session, job_id=self.job_id, event_type=EventType.STARTED,
            message=f"attempt {claim.attempts} of {self.settings.max_attempts} "
                    f"on worker {self.state.worker_id}",
            payload={"attempt": claim.attempts, "max_attempts": self.settings.max_attempts,
                     "worker_id": self.state.worker_id},
        )
        return claim

    # ------------------------------------------------------------------ one attempt

    async def _attempt(self, snap: Snapshot, claim: repo.Claim) -> str:
        try:
            transfer_job = to_transfer_job(
                snap.job, source_portal=snap.source, target_portal=snap.target,
                default_known_hosts=self.settings.default_known_hosts,
                installation=self.state.installation,
            )
            if claim.attempts > 1:
                await self._cleanup(transfer_job)  # leftovers of an earlier attempt
                finished = await self._finished_earlier(snap, transfer_job)
                if finished is not None:
                    return await self._done(finished)
            self.options = dataclasses.replace(self.options, verify=snap.job.verify.value,
                                               write_mhl=snap.job.write_mhl)
            plan = await asyncio.to_thread(
                decide_strategy, transfer_job, self.settings.zip_thresholds(),
                force=_FORCED.get(snap.job.requested_strategy),
            )
            await self.state.db(lambda s: repo.record_plan(
                s, job_id=self.job_id, strategy=ChosenStrategy(plan.strategy.value),
                n_files=plan.n_files, total_bytes=plan.total_bytes, summary=plan.summary(),
            ))
            result = await self._transfer(plan)
        except TransferCancelledError as err:
            return await self._stopped(snap, err)
        except TransferError as err:
            return await self._failed(snap, claim, err)
        except DBAPIError as exc:  # Postgres went away mid-attempt: retry like a lost link
            log.warning("job %s: database error: %s", self.job_id, exc)
            return await self._failed(snap, claim, translate_db_error(exc))
        except Retry:
            raise
        except asyncio.CancelledError:
            # The worker is shutting down (SIGTERM): give the job back for another run.
            await self._give_back("worker shutting down; the job will run again")
            raise
        except ValueError as err:  # a path rule the job breaks now (disk changed since submit)
            return await self._fail(snap, type(err).__name__, str(err),
                                    {"error_type": type(err).__name__, "message": str(err),
                                     "transient": False})
        except Exception as err:
            log.exception("job %s: unexpected error", self.job_id)
            return await self._fail(snap, type(err).__name__, f"internal error: {err}", {
                "error_type": type(err).__name__,
                "message": str(err),
                "transient": False,
                "traceback_tail": traceback.format_exc()[-2000:],
            })
        return await self._done(result, delivered=transfer_job)

    async def _finished_earlier(self, snap: Snapshot, transfer_job: TransferJob
                                ) -> TransferResult | None:
        """A move whose previous attempt delivered and deleted the source, then died
        before DONE was recorded: DONE now, not a FAILED "source does not exist"."""
        started = time.monotonic()
        listing = await asyncio.to_thread(finish_interrupted_move, transfer_job, self.options)
        if listing is None:
            return None
        await self.state.db(lambda s: repo.add_event(
            s, job_id=self.job_id, event_type=EventType.PHASE,
            message="the previous attempt had delivered the tree and deleted the source",
            payload={"phase": "deliver", "status": "done", "resumed": True},
        ))
        strategy = snap.job.strategy
        return TransferResult(
            strategy=TransferStrategy(strategy.value) if strategy else TransferStrategy.DIRECT,
            files_transferred=listing.n_files, bytes_transferred=listing.total_bytes,
            duration_s=time.monotonic() - started,
            warnings=("delivered by the previous attempt",),
        )

    async def _transfer(self, plan: TransferPlan) -> TransferResult:
        token = CancelToken()
        progress = ProgressWriter(self.state, self.job_id, strategy=plan.strategy,
                                  total_bytes=plan.total_bytes or 0)
        task = asyncio.ensure_future(asyncio.to_thread(
            execute_plan, plan, options=self.options, progress=progress,
            on_phase=PhaseWriter(self.state, self.job_id), cancel=token,
        ))
        watcher = asyncio.create_task(self._watch(token))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # The worker is shutting down: stop rsync/zip before the job is given back,
            # keeping what was staged so the next attempt resumes it.
            token.interrupt()
            await asyncio.wait({task}, timeout=SHUTDOWN_WAIT_S)
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: it is the expected TransferCancelledError
            raise
        finally:
            watcher.cancel()

    async def _watch(self, token: CancelToken) -> None:
        """Set the cancel token when the API asks, or when the job outlives its timeout."""
        started = time.monotonic()
        while not token.cancelled:
            await asyncio.sleep(CANCEL_POLL_S)
            if time.monotonic() - started > self.settings.job_timeout_s:
                self.timed_out = True
                token.cancel()
                return
            try:
                if await self.state.db(lambda s: repo.cancel_requested(s, job_id=self.job_id)):
                    token.cancel()
            except Exception as exc:  # noqa: BLE001 - keep watching once the DB is back
                log.warning("job %s: cancel check failed: %s", self.job_id, exc)

    # ------------------------------------------------------------------ endings

    async def _done(self, result: TransferResult, *, delivered: TransferJob | None = None
                    ) -> str:
        """Record DONE; then remove the staging root ``delivered`` left (best effort:
        the orphan sweep gets what stays)."""
        payload = {
            "strategy": result.strategy.value,
            "streams": result.streams,
            # The path (issue 19): ssh connections used, RTT measured, the send's rate.
            "connections": result.connections,
            "rtt_ms": None if result.rtt_s is None else round(result.rtt_s * 1000, 2),
            "send_rate_bytes_per_s": result.send_rate_bytes_s,
            "files_copied": result.files_transferred,
            "bytes_copied": result.bytes_transferred,
            "duration_s": round(result.duration_s, 3),
            "throughput_bytes_per_s": round(result.throughput_bytes_per_s, 1),
            "phase_timings": {k: round(v, 3) for k, v in result.phase_timings.items()},
            "warnings": list(result.warnings),
            "verified": result.algorithm or "size",
        }
        if not any(w.startswith(LATE_CANCEL) for w in result.warnings) and await self.state.db(
                lambda s: repo.cancel_requested(s, job_id=self.job_id)):
            # Asked while the tree was going in place (or before the engine looked):
            # the delivery happened, so the truth is DONE, with the cancel noted.
            payload["warnings"].append(f"{LATE_CANCEL}: ignored, the job finished")
        recorded = await self._finish(
            JobStatus.DONE, EventType.DONE,
            f"{result.files_transferred} files, {result.bytes_transferred} bytes "
            f"in {result.duration_s:.2f}s",
            payload,
            files_copied=result.files_transferred, bytes_copied=result.bytes_transferred,
            duration_s=result.duration_s,
            manifest=(result.algorithm, [repo.ManifestLine(f.path, f.size, f.mtime_ns, f.hash)
                                         for f in result.files]),
        )
        if recorded and delivered is not None:
            await asyncio.to_thread(remove_staging_root, delivered, self.options)
        return "DONE"

    async def _stopped(self, snap: Snapshot, err: TransferCancelledError) -> str:
        await self._cleanup_best_effort(snap)
        if self.timed_out:
            message = f"timed out after {self.settings.job_timeout_s}s"
            return await self._fail(snap, "JobTimeoutError", message,
                                    {"error_type": "JobTimeoutError", "message": message,
                                     "transient": False}, cleaned=True)
        await self._finish(JobStatus.CANCELLED, EventType.CANCELLED,
                           "cancelled; temp files removed, source untouched",
                           {"engine": err.as_dict()})
        return "CANCELLED"

    async def _failed(self, snap: Snapshot, claim: repo.Claim,
                      err: TransferError | KetterDbError) -> str:
        """Retry a transient error while attempts remain; otherwise FAILED."""
        if err.transient and claim.attempts < self.settings.max_attempts:
            await self._cleanup_best_effort(snap, final=False)  # staging kept: the retry resumes
            defer = min(self.settings.retry_backoff_s * 2 ** (claim.attempts - 1), MAX_BACKOFF_S)
            payload = {
                "attempt": claim.attempts,
                "max_attempts": self.settings.max_attempts,
                "next_try_in_s": defer,
                "error": err.as_dict(),
            }
            released = await self.state.db_persistent(
                lambda s: repo.release_for_retry(
                    s, job_id=self.job_id, worker_id=self.state.worker_id,
                    message=f"attempt {claim.attempts} failed ({err}); "
                            f"next try in {defer:.0f}s",
                    payload=payload, error_type=type(err).__name__, error_message=str(err),
                ),
                what=f"job {self.job_id} retry",
            )
            if released:
                raise Retry(defer=defer)
            return "taken away during retry"
        return await self._fail(snap, type(err).__name__, str(err),
                                {**err.as_dict(), "attempts": claim.attempts})

    async def _fail(self, snap: Snapshot, error_type: str, message: str,
                    payload: dict[str, Any], *, cleaned: bool = False) -> str:
        if not cleaned:
            await self._cleanup_best_effort(snap)
        await self._finish(JobStatus.FAILED, EventType.ERROR, message, payload,
                           level=EventLevel.ERROR, error_type=error_type[:100],
                           error_message=message)
        return "FAILED"

    async def _finish(self, status: JobStatus, event_type: EventType, message: str,
                      payload: dict[str, Any], **values: Any) -> bool:
        """Record the job's end; False when the job is no longer this worker's."""
        level = values.pop("level", EventLevel.INFO)
        manifest = values.pop("manifest", None)

        def record(s: Any) -> bool:
            ended = repo.finish_job(
                s, job_id=self.job_id, worker_id=self.state.worker_id, status=status,
                event_type=event_type, message=message, payload=payload, level=level, **values,
            )
            if ended and manifest is not None:  # the receipt lands with DONE, in one commit
                repo.record_manifest(s, job_id=self.job_id, algorithm=manifest[0],
                                     files=manifest[1])
            return ended

        ok = await self.state.db_persistent(record, what=f"job {self.job_id} {status.value}")
        if not ok:
            log.warning("job %s: not ours any more; %s not recorded", self.job_id, status.value)
        else:
            notify_later(self.state, self.job_id)  # also writes the job's end log line
        return bool(ok)

    async def _give_back(self, message: str) -> None:
        try:
            await self.state.db(lambda s: repo.release_for_retry(
                s, job_id=self.job_id, worker_id=self.state.worker_id, message=message,
                payload={"reason": "worker_shutdown"},
            ))
        except Exception as exc:  # noqa: BLE001 - the reconciler finds it via the heartbeat
            log.warning("job %s: could not give back: %s", self.job_id, exc)

    # ------------------------------------------------------------------ temp files

    async def _cleanup(self, transfer_job: TransferJob) -> None:
        await asyncio.to_thread(cleanup_job_temp, transfer_job, self.options)

    async def _cleanup_best_effort(self, snap: Snapshot, *, final: bool = True) -> None:
        """Remove this job's temp zips on both sides and, when the job ends (``final``),
        its staging directory; failure is an event, not a crash."""
        try:
            transfer_job = to_transfer_job(
                snap.job, source_portal=snap.source, target_portal=snap.target,
                default_known_hosts=self.settings.default_known_hosts,
                installation=self.state.installation,
            )
            await self._cleanup(transfer_job)
            if final:
                await discard_and_log(self.state, self.job_id, transfer_job,
                                      why=f"job ended, attempt {snap.job.attempts}")
        except Exception as exc:  # noqa: BLE001 - cleanup must never hide the job's outcome
            message = f"temp cleanup failed: {exc}"
            log.warning("job %s: %s", self.job_id, message)
            try:
                await self.state.db(lambda s: repo.add_event(
                    s, job_id=self.job_id, event_type=EventType.PHASE,
                    level=EventLevel.WARNING, message=message,
                    payload={"phase": "cleanup", "status": "failed"},
                ))
            except Exception as db_exc:  # noqa: BLE001 - the log line above still tells
                log.warning("job %s: cleanup event not recorded: %s", self.job_id, db_exc)


async def run_job(ctx: dict[str, Any], job_id: int) -> str:
    """The arq job function: ``enqueue_job("run_job", job_id)``."""
    state: WorkerState = ctx["ketter"]
    return await JobRun(state, job_id).run()

