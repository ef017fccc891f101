"""Checks before any byte moves: the set-ups in which a job could only do harm, refused
with one clear reason while nothing has been written yet.

- One storage under two names: the target (or the final name) is the source, or lies
  inside it, though the paths differ (a bind or NFS double mount, an ssh portal to
  this very host). Locally by device and inode; across ssh by a probe file written
  in the source and looked for from the target's side.
- ``merge`` where the final name is not a folder, or into a tree holding a symlink
  where the source has an entry (merge never writes through a link).
- A move whose source this account could not empty (``integrity.check_deletable``).
- ``verify=checksum`` with a remote host that has no hash tool.
- ZIP_FIRST to a remote host without ``unzip`` (``check_unzip``, from its one
  capability probe), instead of failing at the first chunk after a send.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path, PurePosixPath

from mvp_core.transfer_engine import capabilities, content, integrity, remote_sh
from mvp_core.transfer_engine.endpoints import Endpoint, LocalEndpoint, SshEndpoint
from mvp_core.transfer_engine.errors import InvalidEndpointError, TargetExistsError
from mvp_core.transfer_engine.job import OnExisting, TransferJob, TransferMode
from mvp_core.transfer_engine.manifest import FILE, Manifest
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.results import CancelToken
from mvp_core.transfer_engine.ssh import raise_for_remote, run_remote
from mvp_core.transfer_engine.steps import destination_of
from mvp_core.transfer_engine.verify import TreeListing

PROBE_PREFIX = ".ketter-probe-"


def check_before_send(job: TransferJob, source: TreeListing, options: EngineOptions,
                      cancel: CancelToken | None = None) -> None:
    """Every refusal above, in the order a user would want to hear them."""
    risky = job.mode is TransferMode.MOVE or job.on_existing is not OnExisting.FAIL
    if risky:
        check_not_same_storage(job, source, options, cancel)
    if job.on_existing is OnExisting.MERGE:
        check_merge_target(job, source, options, cancel)
    if job.mode is TransferMode.MOVE:
        integrity.check_deletable(job.source, source, options, cancel)
    if options.verify == integrity.CHECKSUM:
        content.algorithm_for((job.source, job.target), options, cancel)


def check_unzip(job: TransferJob, options: EngineOptions,
                cancel: CancelToken | None = None) -> None:
    """ZIP_FIRST unpacks on the target: a remote target must have unzip."""
    if isinstance(job.target, SshEndpoint):
        capabilities.require_unzip(job.target,
                                   capabilities.of_host(job.target, options, cancel))


_SPARSE_MIN = 1024 * 1024  # below this a hole is not worth a warning
_SHOWN = 3


def fidelity_losses(manifest: Manifest | None) -> list[str]:
    """What rsync -a and zip do not carry, said instead of silently dropped: hard links
    (each delivered as its own copy), sparse files (delivered in full) and extended
    attributes (not carried: Finder tags, quarantine flags, resource forks)."""
    if manifest is None or not isinstance(manifest.root, Path):
        return []
    files = [e for e in manifest.entries if e.kind == FILE]
    linked = [e.rel_path for e in files if e.nlink > 1]
    sparse = [e.rel_path for e in files
              if e.size >= _SPARSE_MIN and e.blocks * 512 < e.size // 2]
    attrs: list[str] = []
    for e in files:
        try:
            names = os.listxattr(manifest.root / e.rel_path if e.rel_path else manifest.root,
                                 follow_symlinks=False)
        except (OSError, AttributeError):
            continue
        if [n for n in names if not n.startswith("security.")]:
            attrs.append(e.rel_path)
    out = []
    if linked:
        out.append(f"{len(linked)} file(s) are hard links ({_examples(linked)}): each is "
                   "delivered as a separate copy")
    if sparse:
        out.append(f"{len(sparse)} sparse file(s) ({_examples(sparse)}) are delivered in "
                   "full: they take their whole size at the target")
    if attrs:
        out.append(f"{len(attrs)} file(s) carry extended attributes ({_examples(attrs)}) "
                   "that are not carried")
    return out


def _examples(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names[:_SHOWN]) + (", ..." if len(names) > _SHOWN else "")


def _same_storage_error(job: TransferJob) -> InvalidEndpointError:
    return InvalidEndpointError(
        f"the target {job.target} is the source {job.source} (or lies inside it) under "
        "another name (same storage seen through two paths or hosts): refused before "
        "any byte moved")


def check_not_same_storage(job: TransferJob, source: TreeListing, options: EngineOptions,
                           cancel: CancelToken | None = None) -> None:
    """``InvalidEndpointError`` when the destination would be the source itself."""
    final = destination_of(job)
    if isinstance(job.source, LocalEndpoint) and isinstance(job.target, LocalEndpoint):
        _check_local_identity(job, Path(job.source.path), Path(job.target.path),
                              Path(final.path), source.is_dir)
        return
    probe_dir = _probe_dir(job.source, source.is_dir)
    name = PROBE_PREFIX + secrets.token_hex(8)
    token = _write_probe(job.source, probe_dir, name, options, cancel)
    if token is None:
        return  # a source we cannot write to is one a move could not delete either
    try:
        if _probe_seen(job.target, final, name, walk=source.is_dir, options=options,
                       cancel=cancel):
            raise _same_storage_error(job)
    finally:
        _remove_probe(job.source, probe_dir, name, token, options)


def _probe_dir(source: Endpoint, is_dir: bool) -> str:
    path = PurePosixPath(source.path)
    return str(path if is_dir else path.parent)


def _write_probe(where: Endpoint, directory: str, name: str, options: EngineOptions,
                 cancel: CancelToken | None) -> str | None:
    """Write the probe; returns what ``_remove_probe`` needs to put the folder's times
    back (None: the folder cannot be written, no probe)."""
    if isinstance(where, SshEndpoint):
        result = run_remote(where, ("sh", "-c", remote_sh.PROBE_FILE, "sh", directory, name,
                                    "mk"),
                            options, what="write a probe file", cancel=cancel, check=False)
        if result.exit_code in (255, 127):
            raise_for_remote(result, where, "write a probe file")
        return result.stdout_tail.strip() if result.exit_code == 0 else None
    try:
        st = os.stat(directory)
        with open(os.path.join(directory, name), "x"):
            pass
    except OSError:
        return None
    return f"{st.st_atime_ns}/{st.st_mtime_ns}"


def _remove_probe(where: Endpoint, directory: str, name: str, token: str,
                  options: EngineOptions) -> None:
    if isinstance(where, SshEndpoint):
        run_remote(where, ("sh", "-c", remote_sh.PROBE_FILE, "sh", directory, name, "rm",
                           token), options, what="remove a probe file", check=False)
        return
    try:
        os.unlink(os.path.join(directory, name))
        atime, mtime = (int(t) for t in token.split("/"))
        os.utime(directory, ns=(atime, mtime))
    except OSError:
        pass


def _probe_seen(target: Endpoint, final: Endpoint, name: str, *, walk: bool,
                options: EngineOptions, cancel: CancelToken | None) -> bool:
    if isinstance(target, SshEndpoint):
        dirs = (str(target.path), str(final.path)) if walk else (str(target.path),)
        result = run_remote(target, ("sh", "-c", remote_sh.SAME_STORAGE, "sh", name,
                                     "1" if walk else "0", *dirs),
                            options, what="look for the source under the target", cancel=cancel,
                            check=False)
        raise_for_remote(result, target, "look for the source under the target")
        return result.stdout_tail.strip() == "1"
    places = [Path(target.path)]
    if walk:
        places += [Path(final.path), *Path(target.path).parents]
    return any(os.path.lexists(p / name) for p in places)


def _check_local_identity(job: TransferJob, src: Path, target: Path, final: Path,
                          is_dir: bool) -> None:
    """Device and inode, not paths: a bind mount shows one folder under two names."""
    try:
        src_id = _identity(src)
    except OSError:
        return
    if os.path.lexists(final) and _identity(final) == src_id:
        raise _same_storage_error(job)
    if not is_dir:
        return
    for place in (target, *target.parents):
        try:
            if _identity(place) == src_id:
                raise _same_storage_error(job)
        except FileNotFoundError:
            continue


def _identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def check_merge_target(job: TransferJob, source: TreeListing, options: EngineOptions,
                       cancel: CancelToken | None = None) -> None:
    """Merge writes into a folder, never over a file and never through a symlink."""
    final = destination_of(job)
    if isinstance(final, SshEndpoint):
        result = run_remote(final, ("sh", "-c", remote_sh.MERGE_TARGET, "sh", str(final.path)),
                            options, what="look at the merge target", cancel=cancel,
                            check=False, capture_stdout=True)
        raise_for_remote(result, final, "look at the merge target")
        kind, _, rest = result.stdout.partition(b"\0")
        links = {os.fsdecode(r)[2:] for r in rest.split(b"\0") if r}
        what = kind.decode("ascii", "replace")
    else:
        what, links = _local_merge_target(Path(final.path))
    if what == "none":
        return
    if what == "file" or not source.is_dir:
        if source.is_dir or what == "dir":
            raise TargetExistsError(
                f"merge refused: {final} is {'a folder' if what == 'dir' else 'a file (or link)'} "
                f"and the source is {'a folder' if source.is_dir else 'a file'}; nothing was "
                "written (choose replace, or another target)")
        return
    clash = sorted(rel for rel in source.entries if _through_link(rel, links))
    if clash:
        raise TargetExistsError(
            f"merge refused: the existing tree {final} holds symlinks where the source has "
            f"entries ({', '.join(repr(c) for c in clash[:5])}); merge never writes through "
            "a link. Nothing was written.")


def _through_link(rel: str, links: set[str]) -> bool:
    parts = rel.split("/")
    return any("/".join(parts[:i]) in links for i in range(1, len(parts) + 1))


def _local_merge_target(final: Path) -> tuple[str, set[str]]:
    try:
        st = os.lstat(final)
    except FileNotFoundError:
        return "none", set()
    if not stat.S_ISDIR(st.st_mode):
        return "file", set()
    links: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(final):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                links.add(os.path.relpath(full, final))
    return "dir", links
