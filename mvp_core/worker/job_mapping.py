"""From a stored job and its portals to the engine's ``TransferJob``, confined to portal bases.

Job paths are relative to their portal's ``base_path``. Anything that could leave
the base is refused here, once, for both the API (at submit time, a 422) and the
worker (at run time, in case the disk changed since): NUL bytes, absolute paths,
``..`` components, and, for local portals, symlinks that resolve outside the base.
Remote symlinks cannot be resolved from here (see the hardening issue).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from mvp_core.db.models import Job, JobMode, Portal, PortalKind
from mvp_core.db.repository import InvalidRequestError
from mvp_core.transfer_engine.endpoints import Endpoint, LocalEndpoint, SshEndpoint
from mvp_core.transfer_engine.job import OnExisting, TransferJob, TransferMode


def clean_relative(path: str, *, what: str, allow_empty: bool = False) -> str:
    """Normalise a portal-relative path (``a//b/./c`` -> ``a/b/c``) or refuse it."""
    if "\x00" in path:
        raise InvalidRequestError(f"{what} contains a NUL byte")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError(f"{what} is not valid Unicode text") from None
    if path.startswith("/"):
        raise InvalidRequestError(f"{what} must be relative to the portal base, not absolute")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidRequestError(f"{what} must not contain '..'")
    if not parts and not allow_empty:
        raise InvalidRequestError(f"{what} must name something inside the portal base")
    return "/".join(parts)


def portal_path(portal: Portal, rel: str) -> PurePosixPath:
    """The absolute path of ``rel`` under the portal base (lexically; no disk access)."""
    base = PurePosixPath(portal.base_path)
    return base / rel if rel else base


def confined_local_path(portal: Portal, rel: str, *, what: str) -> Path:
    """``base/rel`` on this host, refused if symlinks make it resolve outside the base."""
    base = Path(portal.base_path)
    path = Path(portal_path(portal, rel))
    real_base = base.resolve()
    real = path.resolve()
    if real != real_base and real_base not in real.parents:
        raise InvalidRequestError(f"{what} resolves outside the portal base")
    return path


def _location(portal: Portal) -> tuple[str, ...]:
    """Portals with the same location share one filesystem namespace."""
    if portal.kind is PortalKind.LOCAL:
        return ("local",)
    return ("ssh", portal.host or "", str(portal.port or 22))


def _abs_for_compare(portal: Portal, rel: str) -> PurePosixPath:
    if portal.kind is PortalKind.LOCAL:
        return PurePosixPath(os.path.realpath(portal_path(portal, rel)))
    return portal_path(portal, rel)


def _within(child: PurePosixPath, parent: PurePosixPath) -> bool:
    return child == parent or parent in child.parents


def check_overlap(
    *, source_portal: Portal, source_rel: str, target_portal: Portal, target_rel: str
) -> None:
    """Refuse a job whose output would be its source, or whose source holds its target.

    The output is ``TARGET/<basename of SOURCE>``; it must not equal, contain or
    sit inside the source, and the target directory must not sit inside the source.
    """
    if _location(source_portal) != _location(target_portal):
        return
    source = _abs_for_compare(source_portal, source_rel)
    target = _abs_for_compare(target_portal, target_rel)
    output = target / source.name
    if _within(target, source):
        raise InvalidRequestError("target is the source or inside it")
    if _within(source, output) or _within(output, source):
        raise InvalidRequestError("source and target are the same place")


def checked_identity_file(path: str | None) -> Path | None:
    """A portal's private key, refused when others can read it: ssh would silently skip
    it and fail with a bare "Permission denied"; the job should say why."""
    if not path:
        return None
    key = Path(path)
    try:
        mode = stat.S_IMODE(key.stat().st_mode)
    except OSError:
        return key  # missing or unreadable: the engine says so plainly
    if mode & 0o077:
        who = "everyone" if mode & 0o004 else "its group"
        raise InvalidRequestError(
            f"identity file {key} has permissions {mode:04o} (readable by {who}); "
            "ssh refuses such keys: chmod 600 it"
        )
    return key


def endpoint_for(portal: Portal, rel: str, *, what: str, known_hosts: Path | None = None) -> Endpoint:
    """The engine endpoint of ``rel`` under ``portal``."""
    if portal.kind is PortalKind.LOCAL:
        return LocalEndpoint(confined_local_path(portal, rel, what=what))
    return SshEndpoint(
        host=portal.host or "",
        user=portal.username,
        port=portal.port or 22,
        path=portal_path(portal, rel),
        identity_file=checked_identity_file(portal.identity_file),
        known_hosts_file=(
            Path(portal.known_hosts_file) if portal.known_hosts_file else known_hosts
        ),
        rsync_path=portal.rsync_path,
    )


def engine_job_id(job_id: int, installation: str = "") -> str:
    """The name the engine gives this job's staging dir and temp files (stable across
    attempts): ``ketter-<installation>-job-<id>``, so two installations sharing a target
    never meet on a name."""
    return f"ketter-{installation}-job-{job_id}" if installation else f"ketter-job-{job_id}"


def to_transfer_job(
    job: Job,
    *,
    source_portal: Portal,
    target_portal: Portal,
    default_known_hosts: Path | None = None,
    installation: str = "",
) -> TransferJob:
    """Map a stored job to the engine's unit of work, re-checking every path rule."""
    source_rel = clean_relative(job.source_path, what="source_path")
    target_rel = clean_relative(job.target_path, what="target_path", allow_empty=True)
    check_overlap(
        source_portal=source_portal, source_rel=source_rel,
        target_portal=target_portal, target_rel=target_rel,
    )
    return TransferJob(
        source=endpoint_for(source_portal, source_rel, what="source_path",
                            known_hosts=default_known_hosts),
        target=endpoint_for(target_portal, target_rel, what="target_path",
                            known_hosts=default_known_hosts),
        mode=TransferMode.MOVE if job.mode is JobMode.MOVE else TransferMode.COPY,
        job_id=engine_job_id(job.id, installation),
        on_existing=OnExisting(job.on_existing.value),
    )


def output_lock_name(*, source_rel: str, target_portal: Portal, target_rel: str) -> str:
    """What a job writes, as one string: two jobs with the same name never run together."""
    out = portal_path(target_portal, target_rel) / PurePosixPath(source_rel).name
    return ":".join(_location(target_portal)) + ":" + str(out)

