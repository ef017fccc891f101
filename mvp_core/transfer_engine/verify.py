"""Does the destination hold what the source holds? Every relative path, its kind and size.

A listing maps ``rel_path -> (kind, size)`` (kind ``f``/``d``/``l``/``o``; size
counts for files only) and keeps each file's stamp ``size/mtime/inode`` (how the
source is proven unchanged, see ``content``). Local trees are listed with the
manifest walker; remote trees with one listing over ssh (``remote_sh.LIST_TREE``: GNU
``find -printf``, or BSD ``stat -f`` on a Mac), NUL-separated so no name (newlines
included) can break the parse. A staged tree must hold exactly
the source's entries (``strict``); a merge target may hold more.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from mvp_core.transfer_engine.endpoints import Endpoint, SshEndpoint
from mvp_core.transfer_engine.errors import SourceMissingError, VerificationError
from mvp_core.transfer_engine.manifest import DIR, FILE, OTHER, SYMLINK, Manifest, build_manifest
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.remote_sh import LIST_TREE
from mvp_core.transfer_engine.results import CancelToken
from mvp_core.transfer_engine.runner import CommandResult
from mvp_core.transfer_engine.ssh import raise_for_remote, run_remote

Listing = dict[str, tuple[str, int]]

# GNU find's %y letter, or the first letter of BSD stat's mode string ("-" a file).
_FIND_KINDS = {"f": FILE, "-": FILE, "d": DIR, "l": SYMLINK}
_MAX_REPORTED = 5


@dataclass(frozen=True)
class TreeListing:
    """A listing plus whether its root is a directory; ``stamps``: each file's
    ``size/mtime/inode`` as listed (empty when unknown)."""

    is_dir: bool
    entries: Listing
    stamps: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def n_files(self) -> int:
        return sum(1 for kind, _ in self.entries.values() if kind == FILE)

    @property
    def total_bytes(self) -> int:
        return sum(size for kind, size in self.entries.values() if kind == FILE)


def from_manifest(manifest: Manifest) -> TreeListing:
    return TreeListing(manifest.is_dir, manifest.sizes_by_path(),
                       {e.rel_path: f"{e.size}/{e.mtime_ns}/{e.ino}"
                        for e in manifest.entries if e.kind == FILE})


def remote_find_argv(path: str) -> tuple[str, ...]:
    """The remote listing: kind/size/mtime/inode/relative-path records separated by NUL."""
    return ("sh", "-c", LIST_TREE, "sh", path)


def parse_find_output(data: bytes) -> TreeListing:
    """Parse ``remote_find_argv`` output; the root appears with an empty relative path."""
    entries: Listing = {}
    stamps: dict[str, str] = {}
    is_dir = True
    for record in data.split(b"\0"):
        if not record:
            continue
        kind_b, size_b, mtime_b, ino_b, rel_b = record.split(b"/", 4)
        kind = _FIND_KINDS.get(kind_b[:1].decode("ascii", "replace"), OTHER)
        rel = os.fsdecode(rel_b)
        if rel == "." or rel.startswith("./"):  # BSD stat's "./rel" (GNU's %P has no "./")
            rel = rel[2:]
        if rel == "":
            is_dir = kind == DIR
            if is_dir:
                continue
        entries[rel] = (kind, int(size_b) if kind == FILE else 0)
        if kind == FILE:
            stamps[rel] = "/".join(b.decode("ascii", "replace") for b in (size_b, mtime_b, ino_b))
    return TreeListing(is_dir, entries, stamps)


def list_tree(
    endpoint: Endpoint, options: EngineOptions, *, cancel: CancelToken | None = None
) -> TreeListing | None:
    """List a local or remote tree; None when its root does not exist."""
    if isinstance(endpoint, SshEndpoint):
        result = run_remote(endpoint, remote_find_argv(str(endpoint.path)), options,
                            what="list files", cancel=cancel, check=False, capture_stdout=True)
        return listing_from_find(result, endpoint)
    try:
        return from_manifest(build_manifest(endpoint.path))
    except SourceMissingError:
        if not os.path.lexists(endpoint.path):
            return None
        raise


def listing_from_find(result: CommandResult, endpoint: SshEndpoint) -> TreeListing | None:
    """A remote ``find`` listing's result: the tree, None when its root does not exist,
    or the typed error of a failed command."""
    if result.exit_code != 0:
        if "No such file or directory" in result.stderr_tail and not result.stdout:
            return None
        raise_for_remote(result, endpoint, "list files")
    return parse_find_output(result.stdout)


def compare(expected: TreeListing, actual: TreeListing, *, strict: bool = False) -> list[str]:
    """Human-readable differences: what is missing or differs in ``actual`` (and with
    ``strict``, what ``actual`` holds that the source does not)."""
    problems: list[str] = []
    if expected.is_dir != actual.is_dir:
        problems.append("destination is a " + ("directory" if actual.is_dir else "file")
                        + " but the source is not")
        return problems
    for rel, (kind, size) in sorted(expected.entries.items()):
        got = actual.entries.get(rel)
        label = rel or "(root)"
        if got is None:
            problems.append(f"missing: {label}")
        elif got[0] != kind:
            problems.append(f"kind differs: {label} ({kind} vs {got[0]})")
        elif kind == FILE and got[1] != size:
            problems.append(f"size differs: {label} ({size} vs {got[1]} bytes)")
    if strict:
        problems += [f"not in the source: {rel}" for rel in sorted(actual.entries)
                     if rel not in expected.entries]
    return problems


def check_listing(expected: TreeListing, actual: TreeListing | None,
                  destination: Endpoint, *, strict: bool = False) -> TreeListing:
    """Raise ``VerificationError`` unless ``actual`` (the destination's listing, None
    when it does not exist) holds every expected entry (and, ``strict``, no other)."""
    if actual is None:
        raise VerificationError(f"destination does not exist after the transfer: {destination}")
    problems = compare(expected, actual, strict=strict)
    if problems:
        shown = "; ".join(problems[:_MAX_REPORTED])
        more = f" (+{len(problems) - _MAX_REPORTED} more)" if len(problems) > _MAX_REPORTED else ""
        raise VerificationError(
            f"destination {destination} does not match the source: "
            f"{len(problems)} problem(s): {shown}{more}")
    return actual
