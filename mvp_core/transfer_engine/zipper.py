"""Build the ZIP_FIRST archive with Python's ``zipfile``: STORED, ZIP64, faithful metadata.

Why each detail:
- STORED: audio does not compress; the point is one file on the wire, not fewer bytes.
- ``force_zip64=True`` on every member and ``allowZip64``: members > 4 GiB and
  archives > 65,535 entries work, and a growing member can never truncate the archive.
- one entry per directory (empty ones included) so unzip recreates them and restores
  their mode and mtime;
- ``create_system = 3`` (Unix) with the mode in ``external_attr``: unzip restores
  exec bits;
- an extended-timestamp extra field (0x5455 "UT", mtime only): unzip restores mtimes
  to the second, in UTC, instead of the 2-second local-time DOS stamp.
Entry names are ``<basename of source>/<relative path>`` so ``unzip -d TARGET``
gives ``TARGET/<basename>/...`` like rsync does.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from mvp_core.transfer_engine.errors import (
    CommandFailedError,
    NoSpaceError,
    SourceMissingError,
    TransferCancelledError,
    UnsupportedTreeError,
)
from mvp_core.transfer_engine.manifest import DIR, FILE, Manifest
from mvp_core.transfer_engine.results import CancelToken, Progress, ProgressCallback

UNIX = 3
_EXT_TIMESTAMP = 0x5455
_MS_DOS_DIR = 0x10
_CHUNK = 1024 * 1024
_PROGRESS_EVERY_S = 0.1


@dataclass(frozen=True)
class ZipStats:
    entries: int
    files: int
    content_bytes: int
    archive_bytes: int


def extended_timestamp(mtime: int) -> bytes:
    """The "UT" extra field carrying the modification time (flags bit 0 = mtime)."""
    return struct.pack("<HHBl", _EXT_TIMESTAMP, 5, 1, mtime)


def _dos_date_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    t = time.localtime(mtime)
    year = min(max(t.tm_year, 1980), 2107)
    if year != t.tm_year:
        return (year, 1, 1, 0, 0, 0)
    return (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)


def member_info(name: str, st_mode: int, mtime: int, *, is_dir: bool) -> zipfile.ZipInfo:
    """A ZipInfo carrying Unix mode bits and the UT mtime."""
    info = zipfile.ZipInfo(name + "/" if is_dir and not name.endswith("/") else name,
                           date_time=_dos_date_time(mtime))
    info.create_system = UNIX
    info.compress_type = zipfile.ZIP_STORED
    kind = stat.S_IFDIR if is_dir else stat.S_IFREG
    info.external_attr = ((kind | stat.S_IMODE(st_mode)) & 0xFFFF) << 16
    if is_dir:
        info.external_attr |= _MS_DOS_DIR
        info.file_size = 0
        info.compress_size = 0
        info.CRC = 0
    if -(2**31) <= mtime < 2**31:
        info.extra = extended_timestamp(mtime)
    return info


def build_zip(
    manifest: Manifest,
    zip_path: Path,
    *,
    root_name: str,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    include_root: bool = True,
) -> ZipStats:
    """Write ``manifest``'s tree into ``zip_path`` (replacing it); partial archives are removed.

    ``include_root=False`` leaves out the root directory's own entry (a chunk other
    than the last: see ``chunks``); unzip then creates the root without its metadata.
    """
    if not manifest.is_dir:
        raise UnsupportedTreeError("ZIP_FIRST needs a source directory")
    total = manifest.total_bytes
    done = 0
    files = 0
    last_report = 0.0

    def report(force: bool = False) -> None:
        nonlocal last_report
        now = time.monotonic()
        if progress is not None and (force or now - last_report >= _PROGRESS_EVERY_S):
            last_report = now
            progress(Progress("zip", done, total, files, manifest.n_files))

    def check_cancel() -> None:
        if cancel is not None and cancel.cancelled:
            raise TransferCancelledError("cancelled while building the zip")

    try:
        root_st = os.stat(manifest.root)
        with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED,
                             allowZip64=True) as zf:
            if include_root:
                zf.mkdir(member_info(root_name, root_st.st_mode, int(root_st.st_mtime),
                                     is_dir=True))
            for entry in manifest.entries:
                check_cancel()
                name = f"{root_name}/{entry.rel_path}"
                mtime = entry.mtime_ns // 1_000_000_000
                if entry.kind == DIR:
                    zf.mkdir(member_info(name, entry.mode, mtime, is_dir=True))
                    continue
                if entry.kind != FILE:
                    raise UnsupportedTreeError(
                        f"a zip cannot carry {entry.rel_path!r} faithfully (not a regular file)")
                info = member_info(name, entry.mode, mtime, is_dir=False)
                with open(manifest.root / entry.rel_path, "rb") as src, \
                        zf.open(info, "w", force_zip64=True) as dst:
                    while chunk := src.read(_CHUNK):
                        dst.write(chunk)
                        done += len(chunk)
                        report()
                        check_cancel()
                files += 1
                report()
        report(force=True)
        return ZipStats(entries=len(manifest.entries) + int(include_root), files=files, content_bytes=done,
                        archive_bytes=zip_path.stat().st_size)
    except BaseException as exc:
        zip_path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpaceError(f"no space left for the temp zip in {zip_path.parent}") from exc
            if exc.errno == errno.ENOENT:
                raise SourceMissingError(
                    f"source vanished while zipping: {exc.filename}") from exc
            raise CommandFailedError(f"cannot build the temp zip: {exc}") from exc
        raise
