"""DIRECT's parallel streams: how many to run, and which files each one carries.

Why: one rsync-over-ssh stream tops out below a fast link (ssh's cipher and window:
~94 MB/s on the lab's 1 gbit link, docs/lab_report.md); several streams over the
job's one ssh master fill it. Pure functions only: ``direct`` runs what this plans.

- **Partition**: greedy largest-first into the least-loaded stream (LPT scheduling,
  within 4/3 of the best possible finish), so the streams end together. A file is
  never split: one huge file is one stream, however many were asked for. Each file
  also weighs a little extra (``PER_FILE_WEIGHT``): rsync pays per file too, so a
  stream of 10,000 tiny files is not "empty".
- **Floor**: no stream unless it carries at least ``MIN_STREAM_BYTES`` (64 MiB). An
  extra stream costs a second rsync pair, an ssh session, a file-list exchange and
  a few round trips (~0.1-0.2 s at 20 ms RTT) plus CPU on small hosts; 64 MiB is
  ~0.7 s of one stream's 94 MB/s, so the fixed cost stays a small fraction of what
  the stream carries, and below it the saving (a fraction of under a second) is
  eaten. Tiny trees (the TINY bench set is 2 MiB) thus stay one rsync, exactly as
  before, and pay nothing. The count is lowered until the lightest stream meets the
  floor (a 1 GiB file plus 10 MiB of small ones: one stream; the big file decides
  the finish anyway).
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Sequence
from dataclasses import dataclass

MIN_STREAM_BYTES = 64 * 1024 * 1024
PER_FILE_WEIGHT = 16 * 1024  # ~ rsync's per-file cost, in bytes of sending time


@dataclass(frozen=True)
class Stream:
    """One stream's share: relative paths (sorted) and their total size."""

    files: tuple[str, ...]
    bytes: int

    @property
    def n_files(self) -> int:
        return len(self.files)


def partition(files: Sequence[tuple[str, int]], n: int) -> list[Stream]:
    """Split ``(rel_path, size)`` pairs into at most ``n`` streams of even weight.

    Largest first, each into the currently lightest stream; ties broken by path and
    stream index so the same tree always gives the same split (a retry resumes the
    same files in the same streams). Empty streams are dropped.
    """
    n = max(1, min(n, len(files)))
    ordered = sorted(files, key=lambda f: (-f[1], f[0]))
    heap: list[tuple[int, int]] = [(0, i) for i in range(n)]  # (weight, stream index)
    members: list[list[str]] = [[] for _ in range(n)]
    sizes = [0] * n
    for rel, size in ordered:
        weight, i = heapq.heappop(heap)
        members[i].append(rel)
        sizes[i] += size
        heapq.heappush(heap, (weight + size + PER_FILE_WEIGHT, i))
    return [Stream(tuple(sorted(m)), s) for m, s in zip(members, sizes) if m]


def plan_streams(files: Sequence[tuple[str, int]], requested: int, *,
                 min_stream_bytes: int | None = None) -> list[Stream]:
    """The streams to run for these files: at most ``requested``, at most one per
    file, and none lighter than ``min_stream_bytes`` (default ``MIN_STREAM_BYTES``)
    unless there is only one. Always at least one stream (possibly empty)."""
    floor = MIN_STREAM_BYTES if min_stream_bytes is None else min_stream_bytes
    total = sum(size for _rel, size in files)
    k = min(requested, len(files), total // floor if floor > 0 else len(files))
    while k > 1:
        parts = partition(files, k)
        if len(parts) == k and min(p.bytes for p in parts) >= floor:
            return parts
        k -= 1
    return [Stream(tuple(sorted(rel for rel, _size in files)), total)]


def encode_list(prefix: str, files: Sequence[str]) -> bytes:
    """An rsync ``--files-from --from0`` list: ``prefix/rel`` per file, NUL-terminated.

    NUL is the one byte no name can hold, so newlines, quotes and leading dashes
    pass untouched; names that are not UTF-8 keep their bytes (surrogateescape).
    """
    return b"".join(os.fsencode(f"{prefix}/{rel}") + b"\0" for rel in files)
