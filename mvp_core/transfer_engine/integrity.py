"""The rules that let a move delete a studio's only copy, in one place.

1. The source holds still: every file keeps the stamp (size, mtime, inode) it had
   when the job listed it, through the send, the hashing, the rename and up to its own
   unlink. A file that moved is never deleted; ``SourceChangedError`` names it.
2. The content is proven: with ``verify=checksum`` every file is hashed at the source
   and read back from the target's disk, and the two must agree before the rename.
3. The delivery is durable before the source goes: the target's filesystem is
   flushed (``syncfs`` here, ``sync`` there).
4. Exactly the verified files are deleted, each re-checked just before its unlink;
   directories only when empty; never ``rm -rf``. What stays is reported.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from mvp_core.transfer_engine import content, remote_sh
from mvp_core.transfer_engine.endpoints import Endpoint, SshEndpoint
from mvp_core.transfer_engine.errors import (
    SourceChangedError,
    SourceNotDeletableError,
    VerificationError,
)
from mvp_core.transfer_engine.libc import LIBC
from mvp_core.transfer_engine.manifest import DIR, FILE
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.results import CancelToken, DeliveredFile
from mvp_core.transfer_engine.ssh import raise_for_remote, run_remote
from mvp_core.transfer_engine.verify import TreeListing, list_tree

CHECKSUM, SIZE = "checksum", "size"
_MAX_NAMED = 5
STILL_WRITING = "changed during the transfer — still being written?"


def _named(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_MAX_NAMED])
    return shown + (f" (+{len(names) - _MAX_NAMED} more)" if len(names) > _MAX_NAMED else "")


def check_unchanged(before: TreeListing | None, now: TreeListing, source: Endpoint) -> None:
    """``SourceChangedError`` unless every file of ``before`` has the same stamp in
    ``now`` and no entry came or went: the tree sent is the tree still there."""
    if before is None or not before.stamps:
        return
    changed = sorted(rel for rel, st in before.stamps.items() if now.stamps.get(rel) != st)
    changed += sorted(set(now.entries).symmetric_difference(before.entries) - set(changed))
    if changed:
        raise SourceChangedError(
            f"source {source}: {len(changed)} entr{'y' if len(changed) == 1 else 'ies'} "
            f"{STILL_WRITING} {_named(changed)}")


@dataclasses.dataclass(frozen=True)
class ContentCheck:
    """The hashes both sides agreed on, by relative path."""

    algorithm: str
    hashes: dict[str, str]


def check_content(expected: TreeListing, source: Endpoint, destination: Endpoint,
                  options: EngineOptions, cancel: CancelToken | None = None
                  ) -> ContentCheck:
    """Hash every file on both sides at once and compare. The source's hashes must be
    of the listed state (stamps unchanged while read, here; a fresh listing after, for
    a remote source); the destination's must equal them."""
    files = [rel for rel, (kind, _s) in expected.entries.items() if kind == FILE]
    algorithm = content.algorithm_for((source, destination), options, cancel)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="ketter-verify") as pool:
        src_f = pool.submit(content.hash_tree, source, files, algorithm, options,
                            root_is_dir=expected.is_dir, cancel=cancel)
        dst_f = pool.submit(content.hash_tree, destination, files, algorithm, options,
                            root_is_dir=expected.is_dir, cancel=cancel)
        src, dst = src_f.result(), dst_f.result()
    if isinstance(source, SshEndpoint):
        again = list_tree(source, options, cancel=cancel)
        if again is None:
            raise SourceChangedError(f"source {source} disappeared while it was verified")
        check_unchanged(expected, again, source)
    changed = [rel for rel in files if src.get(rel) is not None and src[rel].stamp
               and src[rel].stamp != expected.stamps.get(rel)]
    if changed:
        raise SourceChangedError(f"source {source}: {len(changed)} file(s) {STILL_WRITING} "
                                 f"{_named(sorted(changed))}")
    unreadable = sorted(rel for rel in files if src.get(rel, content.FileHash("!")).digest == "!")
    if unreadable:
        raise VerificationError(f"source files could not be read to hash them: "
                                f"{_named(unreadable)}")
    differs = sorted(rel for rel in files
                     if dst.get(rel, content.FileHash("!")).digest != src[rel].digest)
    if differs:
        raise VerificationError(
            f"destination {destination} does not match the source: content differs "
            f"({algorithm}) in {len(differs)} file(s): {_named(differs)}")
    return ContentCheck(algorithm, {rel: src[rel].digest for rel in files})


def delivered_files(listing: TreeListing, check: ContentCheck | None
                    ) -> tuple[DeliveredFile, ...]:
    """The job's manifest lines, in path order."""
    files = []
    for rel, (kind, size) in sorted(listing.entries.items()):
        if kind != FILE:
            continue
        stamp = listing.stamps.get(rel, "")
        parts = stamp.split("/")
        mtime_ns = _mtime_ns(parts[1]) if len(parts) == 3 else None
        files.append(DeliveredFile(rel, size, mtime_ns,
                                   check.hashes.get(rel) if check is not None else None))
    return tuple(files)


def _mtime_ns(text: str) -> int | None:
    """A stamp's mtime (ns here; ``find``'s ``%T@`` seconds with a fraction there)."""
    try:
        if "." not in text:
            return int(text)
        whole, frac = text.split(".", 1)
        return int(whole) * 1_000_000_000 + int((frac + "000000000")[:9])
    except ValueError:
        return None


# ---------------------------------------------------------------- durable, then delete

_libc = LIBC


def flush(where: Endpoint, options: EngineOptions) -> None:
    """Make what was delivered durable: ``syncfs`` of its filesystem (``sync`` when the
    platform has none); over ssh ``sync -f`` there."""
    if isinstance(where, SshEndpoint):
        result = run_remote(where, ("sh", "-c", remote_sh.SYNC, "sh", str(where.path)),
                            options, what="flush the target to disk", check=False)
        raise_for_remote(result, where, "flush the target to disk")
        return
    syncfs = getattr(_libc, "syncfs", None) if _libc is not None else None
    if syncfs is None:
        os.sync()
        return
    fd = os.open(where.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        if syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


CHANGED, NOT_REMOVED, NEW = "changed", "could not be removed", "new since the job read it"


def delete_verified_source(source: Endpoint, listing: TreeListing, options: EngineOptions,
                           *, delivered_to: Endpoint) -> None:
    """Delete exactly the verified entries of a move's source, each only if unchanged.

    Anything kept (changed, new, or not removable) is reported in one
    ``SourceChangedError``: the delivered tree is complete, the source keeps what
    could not be proven to be in it.
    """
    if isinstance(source, SshEndpoint):
        kept = _delete_remote(source, listing, options)
    else:
        kept = _delete_local(Path(source.path), listing)
    if kept:
        changed = [rel for rel, why in kept if why == CHANGED]
        hint = f" ({len(changed)} {STILL_WRITING})" if changed else ""
        raise SourceChangedError(
            f"delivered to {delivered_to}, but {len(kept)} source entr"
            f"{'y was' if len(kept) == 1 else 'ies were'} kept in {source}{hint}: "
            + "; ".join(f"{rel!r} {why}" for rel, why in kept[:_MAX_NAMED])
            + (f" (+{len(kept) - _MAX_NAMED} more)" if len(kept) > _MAX_NAMED else ""))


def _delete_local(root: Path, listing: TreeListing) -> list[tuple[str, str]]:
    kept: list[tuple[str, str]] = []
    if not listing.is_dir:
        why = _unlink_if_same(root, "", listing)
        return [(root.name, why)] if why else []
    dirs = [rel for rel, (kind, _s) in listing.entries.items() if kind == DIR]
    for rel, (kind, _s) in sorted(listing.entries.items()):
        if kind != DIR:
            why = _unlink_if_same(root / rel, rel, listing)
            if why:
                kept.append((rel, why))
    for rel in sorted(dirs, key=lambda r: r.count("/"), reverse=True):
        try:
            _make_writable_dir((root / rel).parent)
            (root / rel).rmdir()
        except OSError:
            pass  # not empty: what is in it is reported below
    try:
        root.rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        named = {rel for rel, _w in kept}
        kept += [(rel, NEW) for rel in _remaining(root) if rel not in named]
    return kept


def _remaining(root: Path) -> list[str]:
    """Files and links still under ``root`` (empty folders left are not worth a line)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found) or ["."]


def _unlink_if_same(path: Path, rel: str, listing: TreeListing) -> str | None:
    """Unlink ``path`` if it still is what was verified; None when it is gone, else why
    it stays."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    kind = listing.entries.get(rel, ("?", 0))[0]
    if kind == FILE and content.stamp_of(st) != listing.stamps.get(rel):
        return CHANGED
    if kind != FILE and stat.S_ISREG(st.st_mode):
        return CHANGED  # was a link or special file when verified
    try:
        _make_writable_dir(path.parent)
        path.unlink()
    except OSError:
        return NOT_REMOVED
    return None


def _make_writable_dir(path: Path) -> None:
    """A read-only folder of the source must lend write access to be emptied."""
    mode = os.lstat(path).st_mode
    if not mode & stat.S_IWUSR:
        os.chmod(path, stat.S_IMODE(mode) | stat.S_IWUSR)


def _delete_remote(source: SshEndpoint, listing: TreeListing, options: EngineOptions
                   ) -> list[tuple[str, str]]:
    path = PurePosixPath(source.path)
    if listing.is_dir:
        root, remove_root = str(path), True
        prefix = "./"
        items = sorted(listing.entries.items())
    else:
        root, remove_root = str(path.parent), False
        prefix = "./" + path.name
        items = [("", listing.entries[""])]
    records: list[bytes] = []
    for rel, (kind, _s) in items:
        name = os.fsencode(prefix + rel)
        if kind == FILE:
            records.append(b"f/" + listing.stamps.get(rel, "-/-/-").encode() + b"/" + name)
        elif kind != DIR:
            records.append(b"o/-/-/-/" + name)
    dirs = sorted((rel for rel, (kind, _s) in items if kind == DIR),
                  key=lambda r: r.count("/"), reverse=True)
    records += [b"d/0/0/0/" + os.fsencode(prefix + rel) for rel in dirs]
    result = run_remote(source, remote_sh.delete_verified_argv(root, remove_root=remove_root),
                        options, what="delete the source", check=False, capture_stdout=True,
                        input_bytes=b"".join(r + b"\0" for r in records))
    if result.exit_code == 4:
        raise VerificationError(f"the source {source} cannot be entered to delete it",
                                **result.evidence())
    raise_for_remote(result, source, "delete the source")
    why = {ord("C"): CHANGED, ord("K"): NOT_REMOVED, ord("R"): NEW}
    kept: list[tuple[str, str]] = []
    for record in result.stdout.split(b"\0"):
        if record and record[0] in why:
            rel = os.fsdecode(record[1:]).removeprefix("./") or path.name
            if rel not in {k for k, _w in kept}:
                kept.append((rel, why[record[0]]))
    return kept


def check_deletable(source: Endpoint, listing: TreeListing, options: EngineOptions,
                    cancel: CancelToken | None = None) -> None:
    """Before any byte moves: a move whose source this account could not empty (a folder
    it may not write, here: not owned and not writable) is refused now, not half-done."""
    if isinstance(source, SshEndpoint):
        result = run_remote(source, ("sh", "-c", remote_sh.DELETABLE, "sh", str(source.path)),
                            options, what="check the source can be deleted", cancel=cancel,
                            check=False, capture_stdout=True)
        raise_for_remote(result, source, "check the source can be deleted")
        blocked = [os.fsdecode(r) for r in result.stdout.split(b"\0") if r]
    else:
        root = Path(source.path)
        dirs = [root.parent] + ([root] + [root / rel for rel, (kind, _s)
                                          in listing.entries.items() if kind == DIR]
                                if listing.is_dir else [])
        blocked = [str(d) for d in dirs if not _can_empty(d)]
    if blocked:
        raise SourceNotDeletableError(
            f"move refused before any byte moved: this account cannot delete from "
            f"{_named(sorted(blocked))} (no write permission); fix the permissions or "
            "copy instead")


def _can_empty(directory: Path) -> bool:
    try:
        st = os.lstat(directory)
    except OSError:
        return False
    if os.access(directory, os.W_OK | os.X_OK) and not _immutable(directory):
        return True
    return st.st_uid == os.geteuid() and not _immutable(directory)


def _immutable(directory: Path) -> bool:
    """An immutable or append-only folder (``chattr +i``/``+a``): even root cannot
    unlink from it."""
    flags = getattr(os.lstat(directory), "st_flags", None)
    if flags is not None:  # BSD/macOS
        return bool(flags & (getattr(stat, "UF_IMMUTABLE", 0) | getattr(stat, "SF_IMMUTABLE", 0)
                             | getattr(stat, "UF_APPEND", 0) | getattr(stat, "SF_APPEND", 0)))
    return _linux_inode_flags(directory) & (0x10 | 0x20) != 0  # FS_IMMUTABLE_FL | FS_APPEND_FL


def _linux_inode_flags(path: Path) -> int:
    import fcntl  # POSIX only: imported where used
    fs_ioc_getflags = 0x80086601
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return 0
    try:
        buf = bytearray(8)
        fcntl.ioctl(fd, fs_ioc_getflags, buf)
        return int.from_bytes(buf[:4], "little")
    except OSError:
        return 0
    finally:
        os.close(fd)
