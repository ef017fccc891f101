"""A big file split into byte ranges over several ssh connections (issue 19).

Why: on a long link one connection carries ~2 MiB per round trip (``path``), and a
single big render is one rsync stream: at 100 ms a 400 MiB file took 24 s where four
separate connections took 8.7 s. So on a path with more than one connection, a file
of more than one and a half fair shares of the job is cut into equal ranges (``split``)
that run at once, each on its own connection, written at their offsets straight into
the staged file:

- **push**: we read the range (``pread``) into ssh's stdin; the remote ``dd
  of=STAGED seek=K conv=notrunc`` writes it in place (``remote_sh.RANGE_WRITE``);
- **pull**: the remote ``dd if=SOURCE skip=K count=N`` (``remote_sh.RANGE_READ``)
  prints it; ssh's stdout IS the staged file, opened at the offset: no copy here.

No temp copy of the file on either side; dd's ``bs``/``skip``/``seek``/``count`` and
``conv=notrunc`` are POSIX, so a macOS host does it as well as a Linux one.

**Resume**: each finished range leaves a marker ``<staging root>/.ketter-ranges/
<digest>-<k>`` (written only once the range's every byte arrived); the digest covers
the file's name, size, stamp and the cut, so a changed source or another cut starts
over. A retry sends only the ranges without a marker.

**Proof**: the split file then gets its mode and exact mtime from the final rsync pass
(``--size-only``: it sends no data for it); a push whose every file went as ranges into
a new staging tree (one render, or FEW's four mixes) gets them, its folders' too, from
one remote ``chmod`` + ``touch`` per entry instead (``give_modes_and_times``: an rsync
pass is several round trips on a long link). The job's content verification
(forced to ``checksum`` when a file was split: a missing range has the right size)
hashes it on both sides before delivery.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from mvp_core.transfer_engine import remote_sh
from mvp_core.transfer_engine.endpoints import Endpoint, SshEndpoint
from mvp_core.transfer_engine.errors import CommandFailedError, TransferCancelledError
from mvp_core.transfer_engine.manifest import DIR, FILE
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.results import CancelToken
from mvp_core.transfer_engine.runner import run_command
from mvp_core.transfer_engine.ssh import raise_for_remote, remote_command_argv, run_remote
from mvp_core.transfer_engine.verify import TreeListing

BLOCK = 1024 * 1024  # dd's block: ranges start on it
MIN_RANGE = 32 * 1024 * 1024  # a range's floor: at 100 ms its session costs ~2 round trips
RANGE_MARKS = ".ketter-ranges"
MAX_ATTRIBUTE_ENTRIES = 256  # beyond it the final rsync pass gives the attributes
_READ = 1024 * 1024
_PROGRESS_EVERY_S = 0.25


@dataclass(frozen=True)
class Range:
    """Bytes ``[offset, offset + length)`` of the source file ``rel`` ('' : the job's
    source is that file), piece ``index`` of the file's cut."""

    rel: str
    size: int
    offset: int
    length: int
    index: int
    stamp: str
    cut: int  # how many ranges the file has

    @property
    def bytes(self) -> int:
        return self.length

    @property
    def mark(self) -> str:
        """The marker's name: the same file, stamp and cut give the same name."""
        digest = hashlib.sha256(
            f"{self.rel}\0{self.size}\0{self.stamp}\0{self.cut}".encode("utf-8", "surrogateescape")
        ).hexdigest()[:20]
        return f"{digest}-{self.index}"


def split(files: Sequence[tuple[str, int]], stamps: dict[str, str], slots: int, *,
          min_range: int) -> tuple[list[Range], list[tuple[str, int]]]:
    """Cut each file into its number of fair shares of the job (the job's bytes over
    ``slots``, the transfers it runs at once), rounded with a half down, in equal
    block-aligned parts of at least ``min_range``; returns the ranges and the files left
    whole (one share or less, or under two ``min_range``).

    Equal parts of about a share give every slot one and they end together: FEW
    (4 x 128 MiB) at 100 ms went as four whole streams, three of its seven connections
    idle (55 % of the link); cut in halves it filled the link (docs/lab_report.md S8). A file
    of one share keeps one slot, whole (FEW at 20 ms: four streams, as before); one big
    render on a long path takes every slot."""
    if slots <= 1:
        return [], list(files)
    floor = max(min_range, BLOCK)
    share = max(floor, -(-sum(size for _rel, size in files) // slots))
    ranges: list[Range] = []
    whole: list[tuple[str, int]] = []
    for rel, size in files:
        parts = min((2 * size + share - 1) // (2 * share), size // floor)
        if parts < 2:
            whole.append((rel, size))
            continue
        offsets = [k * size // parts // BLOCK * BLOCK for k in range(parts)]
        ends = [*offsets[1:], size]
        for index, (offset, end) in enumerate(zip(offsets, ends, strict=True)):
            ranges.append(Range(rel, size, offset, end - offset, index,
                                stamps.get(rel, ""), parts))
    return ranges, whole


def _join(endpoint: Endpoint, rel: str) -> str:
    return str(PurePosixPath(str(endpoint.path)) / rel) if rel else str(endpoint.path)


def attributes_alone(source: TreeListing, pieces: Sequence[Range]) -> bool:
    """Every file of ``source`` came as ranges and it holds only files and folders, few
    enough for one command's arguments: ``give_modes_and_times`` finishes it."""
    cut = {r.rel for r in pieces}
    return (len(source.entries) <= MAX_ATTRIBUTE_ENTRIES
            and all(kind == DIR or (kind == FILE and rel in cut)
                    for rel, (kind, _size) in source.entries.items()))


def give_modes_and_times(local_root: Path, source: TreeListing, staged: SshEndpoint,
                         options: EngineOptions, cancel: CancelToken | None = None) -> None:
    """The local tree's permission bits and mtimes (to the nanosecond) on the staged
    remote tree, its empty folders made: what ``rsync -a`` would give it, in one round
    trip (an rsync pass is ~8 on a long link: 0.8 s at 100 ms)."""
    files = [rel for rel, (kind, _size) in source.entries.items() if kind == FILE]
    folders = sorted((rel for rel, (kind, _size) in source.entries.items()
                      if kind == DIR and rel), key=lambda rel: -len(PurePosixPath(rel).parts))
    if source.is_dir:
        folders.append("")  # the folder itself, last
    args: list[str] = []
    for kind, rel in [*(("f", rel) for rel in files), *(("d", rel) for rel in folders)]:
        st = os.lstat(local_root / rel if rel else local_root)
        seconds, nanos = divmod(st.st_mtime_ns, 1_000_000_000)
        when = (datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
                + f".{nanos:09d}Z")
        args += [kind, _join(staged, rel), f"{stat.S_IMODE(st.st_mode):o}", when]
    result = run_remote(staged, ("sh", "-c", remote_sh.MODES_AND_TIMES, "sh", *args),
                        options, what="give the tree its modes and times", check=False,
                        cancel=cancel)
    raise_for_remote(result, staged, "give the tree its modes and times")


def marks_dir(root: Endpoint) -> str:
    return str(PurePosixPath(str(root.path)) / RANGE_MARKS)


def done_marks(root: Endpoint, options: EngineOptions, cancel: CancelToken | None
               ) -> frozenset[str]:
    """The ranges an earlier attempt of this job finished (markers in the staging root)."""
    if isinstance(root, SshEndpoint):
        result = run_remote(root, ("sh", "-c", remote_sh.RANGE_MARKS, "sh", marks_dir(root)),
                            options, what="look for finished ranges", cancel=cancel)
        return frozenset(result.stdout_tail.split())
    try:
        return frozenset(os.listdir(marks_dir(root)))
    except OSError:
        return frozenset()


Report = Callable[[int], None]


def send_range(piece: Range, source: Endpoint, staged: Endpoint, root: Endpoint,
               options: EngineOptions, *, cancel: CancelToken, report: Report) -> None:
    """Send one range of ``source`` (the job's source endpoint) into ``staged`` (the
    staged tree or file), on the connection ``options`` say; mark it done in ``root``."""
    if isinstance(staged, SshEndpoint):
        _push(piece, Path(_join(source, piece.rel)), staged, root, options, cancel, report)
    else:
        assert isinstance(source, SshEndpoint)
        _pull(piece, source, staged, root, options, cancel, report)


def _push(piece: Range, local: Path, staged: SshEndpoint, root: Endpoint,
          options: EngineOptions, cancel: CancelToken, report: Report) -> None:
    target = _join(staged, piece.rel)
    mark = str(PurePosixPath(marks_dir(root)) / piece.mark)
    argv = remote_command_argv(
        staged, ("sh", "-c", remote_sh.RANGE_WRITE, "sh", target, str(BLOCK),
                 str(piece.offset // BLOCK), mark, str(piece.length)), options)
    sent = [0]

    def feed(pipe: BinaryIO) -> None:
        with open(local, "rb") as src:
            fd, end, at = src.fileno(), piece.offset + piece.length, piece.offset
            while at < end and not cancel.cancelled:
                data = os.pread(fd, min(_READ, end - at), at)
                if not data:
                    return  # the file shrank: the remote count says "cut short"
                pipe.write(data)
                at += len(data)
                sent[0] = at - piece.offset
                report(sent[0])

    result = run_command(argv, cancel=cancel, what="send a byte range", stdin_from=feed)
    raise_for_remote(result, staged, "send a byte range")


def _pull(piece: Range, source: SshEndpoint, staged: Endpoint, root: Endpoint,
          options: EngineOptions, cancel: CancelToken, report: Report) -> None:
    target = Path(_join(staged, piece.rel))
    target.parent.mkdir(parents=True, exist_ok=True)
    argv = remote_command_argv(
        source, ("sh", "-c", remote_sh.RANGE_READ, "sh", _join(source, piece.rel), str(BLOCK),
                 str(piece.offset // BLOCK), str(-(-piece.length // BLOCK))), options)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
    done = threading.Event()

    def landed() -> int:
        return os.lseek(fd, 0, os.SEEK_CUR) - piece.offset

    def watch() -> None:  # the child writes the file through our fd: its offset is ours
        while not done.wait(_PROGRESS_EVERY_S):
            report(max(0, landed()))

    watcher = threading.Thread(target=watch, name="ketter-range-progress", daemon=True)
    try:
        os.lseek(fd, piece.offset, os.SEEK_SET)
        watcher.start()
        result = run_command(argv, cancel=cancel, what="fetch a byte range", stdout_to=fd)
        raise_for_remote(result, source, "fetch a byte range")
        got = landed()
    finally:
        done.set()
        if watcher.ident is not None:
            watcher.join()
        os.close(fd)
    if got != piece.length:
        raise CommandFailedError(
            f"range cut short: {got} of {piece.length} bytes of {source.path}/{piece.rel} "
            "(the source changed?)", argv=result.argv, exit_code=result.exit_code,
            stderr_tail=result.stderr_tail)
    report(got)
    if cancel.cancelled:
        raise TransferCancelledError("cancelled during a byte range")
    marks = Path(marks_dir(root))
    marks.mkdir(exist_ok=True)
    (marks / piece.mark).touch()


def list_of(ranges: Sequence[Range]) -> list[str]:
    """The split files, once each ('' : the job's source file itself)."""
    return list(dict.fromkeys(r.rel for r in ranges))
