"""Split a ZIP_FIRST tree into chunks: zips of whole files, a few hundred MiB each.

Pure: a manifest and a chunk size in, a ``ChunkPlan`` out; the same tree always gives
the same chunks (files in manifest order, i.e. sorted by path, packed greedily).

- A file is never split; a file bigger than the chunk size is a chunk of its own,
  sent AS IS (``Chunk.as_is``): rsync sends the file itself into the staged tree, no
  zip is built for it. Zipping one file saves no round trip (the per-file toll zips
  are for) and costs a full copy of it on each side: temp space the size of a render,
  twice, plus the zip's and unzip's pass over every byte. A tree with such a file is
  chunked even when it would fit one chunk.
- A tree whose files fit in one chunk stays ONE chunk holding every entry in manifest
  order: exactly the single zip of before.
- With several chunks, every directory entry (and the root's, see ``Chunk.has_root``)
  goes into the LAST chunk. unzip sets a directory's mode and mtime only when it
  creates it, at the end of that archive: a read-only directory created by chunk 0
  could not take chunk 1's files, and its mtime would move when they land. Earlier
  chunks create parent directories plainly; the last one creates the empty ones; a
  directories-only rsync then gives every directory its mode and mtime (zip_first).
  When the last file chunk is an as-is one, the directory entries get a last chunk
  of their own (a zip of directories only, quick to extract).
- ``digest`` names the plan (tree listing with sizes, modes, mtimes, and the split):
  a retry resumes only chunks extracted under the same digest; a changed source
  starts over.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from mvp_core.transfer_engine.manifest import FILE, Manifest, ManifestEntry

# Bytes a zip adds per member beyond its content (headers, zip64 and UT extras) and
# name: counted so a tree of many tiny files still splits near the chunk size.
ENTRY_OVERHEAD = 200


@dataclass(frozen=True)
class Chunk:
    index: int
    entries: tuple[ManifestEntry, ...]
    has_root: bool  # carries the root directory's own entry (the last chunk does)
    as_is: bool = False  # one file bigger than a chunk: sent itself, not zipped

    @property
    def content_bytes(self) -> int:
        return sum(e.size for e in self.entries if e.kind == FILE)

    @property
    def n_files(self) -> int:
        return sum(1 for e in self.entries if e.kind == FILE)

    @property
    def estimated_zip_bytes(self) -> int:
        """Upper estimate of the chunk's zip size (for space checks and accounting)."""
        names = sum(len(e.rel_path.encode("utf-8", "surrogateescape")) for e in self.entries)
        return self.content_bytes + 2 * names + ENTRY_OVERHEAD * (len(self.entries) + 2)

    def manifest(self, whole: Manifest) -> Manifest:
        """This chunk as a manifest of the same root (what ``build_zip`` takes)."""
        return Manifest(root=whole.root, is_dir=True, entries=self.entries)


@dataclass(frozen=True)
class ChunkPlan:
    chunks: tuple[Chunk, ...]
    chunk_bytes: int
    digest: str

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def chunked(self) -> bool:
        return len(self.chunks) > 1


def _weight(entry: ManifestEntry) -> int:
    return entry.size + ENTRY_OVERHEAD


def plan_chunks(manifest: Manifest, chunk_bytes: int, *, root_name: str = "") -> ChunkPlan:
    """Pack ``manifest``'s files into chunks of about ``chunk_bytes`` (see module doc)."""
    if chunk_bytes <= 0:
        raise ValueError(f"chunk size must be positive, got {chunk_bytes}")
    files = [e for e in manifest.entries if e.kind == FILE]
    others = tuple(e for e in manifest.entries if e.kind != FILE)
    groups: list[list[ManifestEntry]] = []
    current: list[ManifestEntry] = []
    weight = 0
    for entry in files:
        w = _weight(entry)
        if current and weight + w > chunk_bytes:
            groups.append(current)
            current, weight = [], 0
        current.append(entry)
        weight += w
    if current:
        groups.append(current)
    as_is = [len(g) == 1 and _weight(g[0]) > chunk_bytes for g in groups]
    if len(groups) <= 1 and not any(as_is):
        chunks: tuple[Chunk, ...] = (Chunk(0, manifest.entries, has_root=True),)
    else:
        if as_is[-1]:  # the directories need a zip of their own
            groups.append([])
            as_is.append(False)
        last = len(groups) - 1
        chunks = tuple(
            Chunk(i, tuple(group) + (others if i == last else ()), has_root=i == last,
                  as_is=as_is[i])
            for i, group in enumerate(groups))
    return ChunkPlan(chunks, chunk_bytes, _digest(manifest, chunks, root_name))


def _digest(manifest: Manifest, chunks: tuple[Chunk, ...], root_name: str) -> str:
    h = hashlib.sha256()
    h.update(f"ketter-chunks/1\0{root_name}\0{len(chunks)}\0".encode("utf-8", "surrogateescape"))
    for chunk in chunks:
        h.update(f"chunk {chunk.index} {int(chunk.has_root)} {int(chunk.as_is)}\0".encode())
        for e in chunk.entries:
            h.update(f"{e.rel_path}\0{e.kind}\0{e.size}\0{e.mode}\0{e.mtime_ns}\0"
                     .encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]
