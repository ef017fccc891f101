"""Staging directories of jobs that ended: removed, and said so in the job's events.

A job writes into ``TARGET/.ketter-job-<id>/`` (see ``transfer_engine.delivery``).
It is kept while the job may run again (a retry resumes from it) and removed when
the job ends FAILED or CANCELLED — by the worker that ended it, or, when that worker
died or the host was unreachable, by:

- the job function run again for a job that is already final (the reconciler
  re-queues the jobs it ends), and
- ``sweep_orphans``: at start-up and every ``SWEEP_INTERVAL_S`` the reconciler lists
  staging directories in the target directories of recently ended jobs and removes
  those whose job is final. Directories of unknown jobs are left alone (another
  Ketter may share the target) and logged.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from mvp_core.db import repository as repo
from mvp_core.db.models import FINAL_STATUSES, EventType, Job, Portal
from mvp_core.transfer_engine.delivery import list_staging, staging_name
from mvp_core.transfer_engine.endpoints import Endpoint
from mvp_core.transfer_engine.execute import discard_job_staging
from mvp_core.transfer_engine.job import TransferJob
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.worker.job_mapping import clean_relative, endpoint_for, to_transfer_job
from mvp_core.worker.state import WorkerState

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 600.0
RECENT_S = 7 * 24 * 3600.0
MAX_TARGET_DIRS = 200

_last_sweep: dict[str, float] = {}


def staging_job_id(name: str, installation: str) -> int | None:
    """The job of this installation a staging directory belongs to
    (``.ketter-<installation>-job-12`` → 12); None for anyone else's."""
    match = re.fullmatch(rf"\.ketter-{re.escape(installation)}-job-(\d+)", name)
    return int(match[1]) if match else None


async def discard_and_log(state: WorkerState, job_id: int, transfer_job: TransferJob,
                          *, why: str) -> bool:
    """Remove one job's staging directory; an event says so when there was one."""
    removed = await asyncio.to_thread(discard_job_staging, transfer_job,
                                      state.settings.engine_options())
    if removed:
        name = staging_name(transfer_job.job_id)
        await state.db(lambda s: repo.add_event(
            s, job_id=job_id, event_type=EventType.PHASE,
            message=f"staging directory {name} removed ({why})",
            payload={"phase": "cleanup", "status": "done", "staging": name, "reason": why},
        ))
    return removed


@dataclass(frozen=True)
class _TargetDir:
    portal: Portal
    rel: str


def _recent_target_dirs(session: Session, recent_s: float) -> list[_TargetDir]:
    since = datetime.now(UTC) - timedelta(seconds=recent_s)
    rows = session.execute(
        select(Job.target_portal_id, Job.target_path)
        .where(Job.status.in_(FINAL_STATUSES), Job.attempts > 0, Job.updated_at >= since)
        .distinct().limit(MAX_TARGET_DIRS)
    ).all()
    dirs = []
    for portal_id, rel in rows:
        portal = session.get(Portal, portal_id)
        if portal is not None:
            session.expunge(portal)
            dirs.append(_TargetDir(portal, rel))
    return dirs


def _load_final_job(session: Session, job_id: int) -> tuple[Job, Portal, Portal] | None:
    job = session.get(Job, job_id)
    if job is None or job.status not in FINAL_STATUSES:
        return None
    source, target = job.source_portal, job.target_portal
    session.expunge_all()
    return job, source, target


def _target_endpoint(target: _TargetDir, state: WorkerState) -> Endpoint:
    rel = clean_relative(target.rel, what="target_path", allow_empty=True)
    return endpoint_for(target.portal, rel, what="target_path",
                        known_hosts=state.settings.default_known_hosts)


async def sweep_orphans(state: WorkerState, *, recent_s: float = RECENT_S) -> list[int]:
    """Remove staging directories of ended jobs; returns the job ids cleaned."""
    options: EngineOptions = state.settings.engine_options()
    targets = await state.db(lambda s: _recent_target_dirs(s, recent_s))
    cleaned: list[int] = []
    seen: set[str] = set()
    for target in targets:
        try:
            endpoint = _target_endpoint(target, state)
            if str(endpoint) in seen:
                continue
            seen.add(str(endpoint))
            names = await asyncio.to_thread(list_staging, endpoint, options)
        except Exception as exc:  # noqa: BLE001 - one unreachable host must not stop the rest
            log.warning("staging sweep: cannot list %s:%s: %s", target.portal.name, target.rel,
                        exc)
            continue
        for job_id in _ids(names, endpoint, state.installation):
            loaded = await state.db(lambda s, j=job_id: _load_final_job(s, j))  # type: ignore[misc]
            if loaded is None:
                continue  # still running or retrying (its retry resumes), or not ours
            job, source, target_portal = loaded
            try:
                transfer_job = to_transfer_job(
                    job, source_portal=source, target_portal=target_portal,
                    default_known_hosts=state.settings.default_known_hosts,
                    installation=state.installation)
                if await discard_and_log(state, job.id, transfer_job,
                                         why=f"orphan of a {job.status.value} job"):
                    cleaned.append(job.id)
            except Exception as exc:  # noqa: BLE001 - logged; the next sweep tries again
                log.warning("staging sweep: job %s: %s", job_id, exc)
    return cleaned


def _ids(names: Iterable[str], where: Endpoint, installation: str) -> list[int]:
    ids = []
    for name in names:
        job_id = staging_job_id(name, installation)
        if job_id is None:
            log.info("staging sweep: %s in %s is not a Ketter job's; left alone", name, where)
        else:
            ids.append(job_id)
    return ids


def maybe_sweep(state: WorkerState, *, interval_s: float = SWEEP_INTERVAL_S) -> bool:
    """Start a background sweep when the last one is ``interval_s`` old (never two at once).

    In the background so an unreachable ssh host never delays the reconciler; kept in
    ``state.background`` so a worker shutdown cancels it like the other loops.
    """
    key = state.worker_id
    now = time.monotonic()
    if any(t.get_name() == "staging-sweep" and not t.done() for t in state.background):
        return False
    last = _last_sweep.get(key)
    if last is not None and now - last < interval_s:
        return False
    _last_sweep[key] = now
    task = asyncio.create_task(_sweep_logged(state), name="staging-sweep")
    state.background.append(task)
    task.add_done_callback(lambda t: _forget(state, t))
    return True


def _forget(state: WorkerState, task: asyncio.Task[None]) -> None:
    if task in state.background:
        state.background.remove(task)


async def _sweep_logged(state: WorkerState) -> None:
    try:
        cleaned = await sweep_orphans(state)
    except Exception as exc:  # noqa: BLE001 - the next sweep tries again
        log.warning("staging sweep failed: %s", exc)
        return
    if cleaned:
        log.info("staging sweep removed the staging dirs of jobs %s", cleaned)
