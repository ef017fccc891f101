"""Names typed in one Unicode normalisation that exist on disk in another.

A Mac hands out decomposed names (NFD: "Sessa\u0303o") while users type composed ones
(NFC: "Sessão"); the bytes differ, so on a file system that does not normalise (Linux,
a Linux file server holding a Mac's tree, the maclike test host) the typed path is
"missing" although the folder is right there. ``resolve`` walks the path from its
deepest existing folder down: a component that is missing but has exactly one sibling
equal to it under NFC takes that sibling's real name. Only missing components are
looked at (one listing per such component, over ssh one round trip each), so a path
that exists costs one check and is never changed. Two siblings equal under NFC are
ambiguous: the path is left as typed (and reported missing as usual).
"""

from __future__ import annotations

import dataclasses
import os
import unicodedata
from pathlib import Path, PurePosixPath

from mvp_core.transfer_engine import remote_sh
from mvp_core.transfer_engine.endpoints import Endpoint, LocalEndpoint, SshEndpoint
from mvp_core.transfer_engine.job import TransferJob
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.results import CancelToken
from mvp_core.transfer_engine.ssh import raise_for_remote, run_remote


def same_name(a: str, b: str) -> bool:
    """Equal once both are NFC."""
    return unicodedata.normalize("NFC", a) == unicodedata.normalize("NFC", b)


def _match(wanted: str, names: list[str]) -> str | None:
    found = [n for n in names if same_name(n, wanted)]
    return found[0] if len(found) == 1 else None


def resolve_local(path: Path) -> Path:
    """``path`` with each missing component replaced by its one NFC-equal sibling."""
    if os.path.lexists(path) or not path.is_absolute():
        return path
    resolved = Path(path.anchor)
    for part in path.parts[1:]:
        candidate = resolved / part
        if not os.path.lexists(candidate):
            try:
                other = _match(part, os.listdir(resolved))
            except OSError:
                return path
            if other is None:
                return path
            candidate = resolved / other
        resolved = candidate
    return resolved


def resolve_remote(endpoint: SshEndpoint, options: EngineOptions,
                   cancel: CancelToken | None = None) -> SshEndpoint:
    """The same over ssh (``remote_sh.NEAREST_LISTING``)."""
    path = endpoint.path
    for _ in range(len(path.parts)):
        result = run_remote(endpoint, ("sh", "-c", remote_sh.NEAREST_LISTING, "sh", str(path)),
                            options, what="look for the path", cancel=cancel, check=False,
                            capture_stdout=True)
        raise_for_remote(result, endpoint, "look for the path")
        found, _, rest = result.stdout.partition(b"\0")
        if found == b"=":
            return dataclasses.replace(endpoint, path=path)
        base = PurePosixPath(os.fsdecode(found))
        names = [os.fsdecode(n) for n in rest.split(b"\0") if n]
        missing = path.parts[len(base.parts)]
        other = _match(missing, names)
        if other is None:
            return endpoint
        path = base.joinpath(other, *path.parts[len(base.parts) + 1:])
    return endpoint


def resolve(endpoint: Endpoint, options: EngineOptions,
            cancel: CancelToken | None = None) -> Endpoint:
    """``endpoint`` itself, or with the path found on disk despite normalisation."""
    if isinstance(endpoint, SshEndpoint):
        return resolve_remote(endpoint, options, cancel)
    typed = Path(endpoint.path).absolute()
    found = resolve_local(typed)
    return endpoint if found == typed else LocalEndpoint(found)


def resolve_source(job: TransferJob, options: EngineOptions,
                   cancel: CancelToken | None = None) -> TransferJob | None:
    """The job with a missing source found under another normalisation, or None.
    Called only once the source was found missing: a job whose paths exist pays
    nothing. (A target folder is not resolved over ssh: a Mac's APFS and HFS+ find an
    NFD folder by its NFC name themselves.)"""
    source = resolve(job.source, options, cancel)
    return None if source == job.source else dataclasses.replace(job, source=source)


def resolve_local_target(job: TransferJob) -> TransferJob:
    """A local target folder typed in NFC that exists in NFD (no ssh, no cost)."""
    if not isinstance(job.target, LocalEndpoint):
        return job
    target = resolve(job.target, EngineOptions())
    return job if target == job.target else dataclasses.replace(job, target=target)
