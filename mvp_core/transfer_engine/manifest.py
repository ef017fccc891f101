"""A manifest of a local tree: every relative path with its kind, size, mode and mtime.

Built once by the planner (counting) and reused to verify the destination before a
move deletes anything. One ``os.scandir`` pass, no per-file subprocess: 100,000
entries walk in well under a second.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from mvp_core.transfer_engine.errors import SourceMissingError

FILE, DIR, SYMLINK, OTHER = "f", "d", "l", "o"


@dataclass(frozen=True)
class ManifestEntry:
    """One entry; ``rel_path`` is relative to the manifest root (``""`` for a file root)."""

    rel_path: str
    kind: str
    size: int
    mode: int
    mtime_ns: int
    ino: int = 0
    nlink: int = 1
    blocks: int = 0  # 512-byte units actually allocated (a sparse file has fewer)


@dataclass(frozen=True)
class Manifest:
    root: Path
    is_dir: bool
    entries: tuple[ManifestEntry, ...]

    @property
    def files(self) -> tuple[ManifestEntry, ...]:
        return tuple(e for e in self.entries if e.kind == FILE)

    @property
    def n_files(self) -> int:
        return sum(1 for e in self.entries if e.kind == FILE)

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries if e.kind == FILE)

    def kinds(self) -> set[str]:
        return {e.kind for e in self.entries}

    def sizes_by_path(self) -> dict[str, tuple[str, int]]:
        """``rel_path -> (kind, size)``: what verification compares."""
        return {e.rel_path: (e.kind, e.size if e.kind == FILE else 0) for e in self.entries}


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISDIR(mode):
        return DIR
    if stat.S_ISLNK(mode):
        return SYMLINK
    return OTHER


def build_manifest(root: Path) -> Manifest:
    """Walk ``root`` without following symlinks; a missing root is ``SourceMissingError``."""
    try:
        st = os.lstat(root)
    except FileNotFoundError as exc:
        raise SourceMissingError(f"source does not exist: {root}") from exc
    except PermissionError as exc:
        raise SourceMissingError(f"source cannot be read: {root}") from exc
    if not stat.S_ISDIR(st.st_mode):
        entry = ManifestEntry("", _kind(st.st_mode), st.st_size, stat.S_IMODE(st.st_mode),
                              st.st_mtime_ns, st.st_ino)
        return Manifest(root=root, is_dir=False, entries=(entry,))

    entries: list[ManifestEntry] = []
    stack: list[tuple[str, str]] = [(os.fspath(root), "")]
    while stack:
        abs_dir, rel_dir = stack.pop()
        try:
            iterator = os.scandir(abs_dir)
        except PermissionError as exc:
            raise SourceMissingError(f"directory cannot be read: {abs_dir}") from exc
        with iterator as it:
            for dirent in it:
                rel = f"{rel_dir}/{dirent.name}" if rel_dir else dirent.name
                est = dirent.stat(follow_symlinks=False)
                kind = _kind(est.st_mode)
                entries.append(ManifestEntry(rel, kind, est.st_size if kind == FILE else 0,
                                             stat.S_IMODE(est.st_mode), est.st_mtime_ns,
                                             est.st_ino, est.st_nlink,
                                             getattr(est, "st_blocks", 0)))
                if kind == DIR:
                    stack.append((dirent.path, rel))
    entries.sort(key=lambda e: e.rel_path)
    return Manifest(root=root, is_dir=True, entries=tuple(entries))
