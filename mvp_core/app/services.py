"""Submission rules for jobs: what the API checks before a job is stored.

Everything a user can get wrong is refused here with ``InvalidRequestError``
(a 422), so the worker only meets problems that appear later (a disk changed,
a host went away).

Disk checks (source exists, output name free) on a local portal of a site are left to
the site's worker, whose engine makes them before any byte moves (``SourceMissingError``,
``TargetExistsError``: the job ends FAILED with the reason in one event): the API host
need not see a LAB's disks. A local portal with no site is on the API's own host (a
one-host install), so the API still refuses those up front with a 422.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from sqlalchemy.orm import Session

from mvp_core.app.schemas import JobCreate
from mvp_core.db.models import Job, OnExisting, Portal, PortalKind, VerifyMode
from mvp_core.db.repository import InvalidRequestError, NotFoundError, create_job, get_portal
from mvp_core.dispatch import SiteConflictError, job_site
from mvp_core.transfer_engine.names import resolve_local
from mvp_core.worker.job_mapping import check_overlap, clean_relative, confined_local_path


def _portal(session: Session, portal_id: int, role: str) -> Portal:
    try:
        return get_portal(session, portal_id=portal_id)
    except NotFoundError:
        raise InvalidRequestError(f"unknown {role} portal {portal_id}",
                                  field=f"{role}_portal_id") from None


def check_output_free(target: Path, source_rel: str, on_existing: OnExisting) -> None:
    """Refuse up front (422) a job whose output name exists on a local target portal,
    unless it says replace or merge. A remote target is checked by the worker (the job
    then ends FAILED with the reason) so a submit never waits on an ssh host."""
    name = PurePosixPath(source_rel).name
    if on_existing is OnExisting.FAIL and os.path.lexists(target / name):
        raise InvalidRequestError(
            f"{name!r} already exists in the target; nothing was submitted (set on_existing "
            "to 'replace' to swap it for the new tree, or 'merge' to write into it)",
            field="on_existing",
        )


def submit_job(session: Session, *, request: JobCreate,
               default_verify: VerifyMode = VerifyMode.CHECKSUM,
               default_write_mhl: bool = False) -> Job:
    """Validate a job request against its portals and store it PENDING (caller commits)."""
    source_portal = _portal(session, request.source_portal_id, "source")
    target_portal = _portal(session, request.target_portal_id, "target")
    source_rel = clean_relative(request.source_path, what="source_path")
    target_rel = clean_relative(request.target_path, what="target_path", allow_empty=True)
    try:
        site = job_site((source_portal.site, source_portal.kind is PortalKind.LOCAL),
                        (target_portal.site, target_portal.kind is PortalKind.LOCAL))
    except SiteConflictError as exc:
        raise InvalidRequestError(str(exc), field="target_portal_id") from None
    if source_portal.kind is PortalKind.LOCAL:
        source = confined_local_path(source_portal, source_rel, what="source_path")
        # A site's disk is its worker's to look at (the engine fails a missing source
        # before any byte moves); this host looks only at portals with no site.
        if source_portal.site is None and not os.path.lexists(source):
            found = resolve_local(source)
            if found != source:
                # Typed in NFC, on disk in NFD (a Mac's tree): the job names what is there.
                depth = len(PurePosixPath(source_rel).parts)
                source_rel = str(PurePosixPath(*Path(found).parts[-depth:]))
                source = found
        if source_portal.site is None and not os.path.lexists(source):
            raise InvalidRequestError(
                f"source_path {source_rel!r} does not exist on portal {source_portal.name!r}",
                field="source_path",
            )
    target = None
    if target_portal.kind is PortalKind.LOCAL:
        target = confined_local_path(target_portal, target_rel, what="target_path")
    check_overlap(
        source_portal=source_portal, source_rel=source_rel,
        target_portal=target_portal, target_rel=target_rel,
    )
    if target is not None and target_portal.site is None:
        check_output_free(target, source_rel, request.on_existing)
    return create_job(
        session,
        mode=request.mode,
        source_portal_id=source_portal.id,
        source_path=source_rel,
        target_portal_id=target_portal.id,
        target_path=target_rel,
        requested_strategy=request.strategy,
        on_existing=request.on_existing,
        verify=request.verify or default_verify,
        write_mhl=default_write_mhl if request.write_mhl is None else request.write_mhl,
        notify_url=request.notify_url,
        site=site,
    )
