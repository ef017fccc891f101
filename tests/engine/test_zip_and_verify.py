"""The zip's format promises, and the verifier's parsing and comparison."""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

from mvp_core.transfer_engine.manifest import build_manifest
from mvp_core.transfer_engine.verify import TreeListing, compare, parse_find_output
from mvp_core.transfer_engine.zipper import build_zip, member_info
from tests.fixtures.trees import OLD_MTIME, make_session_tree


def test_zip_is_stored_zip64_with_unix_modes_and_utc_mtimes(tmp_path: Path) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=3)
    zip_path = tmp_path / "t.zip"
    stats = build_zip(build_manifest(src), zip_path, root_name=src.name)
    with zipfile.ZipFile(zip_path) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        assert zf.testzip() is None
    assert stats.entries == len(infos) and stats.files == 9
    assert "Test Session/" in infos and "Test Session/Bounced Files/" in infos  # empty dir
    kick = infos["Test Session/Audio Files/Kick_0000.wav"]
    assert kick.compress_type == zipfile.ZIP_STORED
    assert kick.create_system == 3
    assert (kick.external_attr >> 16) & 0o7777 == 0o644
    assert (infos["Test Session/render.sh"].external_attr >> 16) & 0o777 == 0o755
    assert infos["Test Session/Bounced Files/"].external_attr & 0x10
    # UT extra field with the exact mtime; zip64 extra present (force_zip64).
    raw = zip_path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[kick.header_offset + 26:kick.header_offset + 30])
    start = kick.header_offset + 30 + name_len
    extra, ids = raw[start:start + extra_len], []
    while extra:
        tag, size = struct.unpack("<HH", extra[:4])
        ids.append(tag)
        if tag == 0x5455:
            assert extra[4:4 + size] == struct.pack("<Bl", 1, OLD_MTIME)
        extra = extra[4 + size:]
    assert 0x0001 in ids and 0x5455 in ids  # zip64 and "UT" in the local header
    assert kick.extract_version >= 45  # ZIP64 version needed


def test_member_info_outside_dos_range_keeps_unix_time() -> None:
    info = member_info("a", 0o100644, 0, is_dir=False)  # 1970: before DOS epoch
    assert info.date_time[0] == 1980
    assert info.extra == struct.pack("<HHBl", 0x5455, 5, 1, 0)


def test_cancelled_or_failed_zip_leaves_no_archive(tmp_path: Path) -> None:
    from mvp_core.transfer_engine.errors import TransferCancelledError
    from mvp_core.transfer_engine.results import CancelToken

    src = make_session_tree(tmp_path / "src", n_audio=3)
    cancel = CancelToken()
    cancel.cancel()
    zip_path = tmp_path / "t.zip"
    try:
        build_zip(build_manifest(src), zip_path, root_name=src.name, cancel=cancel)
    except TransferCancelledError:
        pass
    else:
        raise AssertionError("expected cancellation")
    assert not zip_path.exists()


def test_find_output_parsing_handles_any_name() -> None:
    data = (b"d/4096/1.5/7/\0f/12/1.5/8/a b\nc.wav\0d/4096/1.5/9/sub\0l/7/1.5/10/sub/link\0"
            b"f/0/1.5/11/sub/\xff raw\0p/0/1.5/12/fifo\0")
    listing = parse_find_output(data)
    assert listing.is_dir
    assert listing.entries == {
        "a b\nc.wav": ("f", 12), "sub": ("d", 0), "sub/link": ("l", 0),
        os.fsdecode(b"sub/\xff raw"): ("f", 0), "fifo": ("o", 0),
    }
    assert listing.stamps == {"a b\nc.wav": "12/1.5/8", os.fsdecode(b"sub/\xff raw"): "0/1.5/11"}
    single = parse_find_output(b"f/5/2.25/3/\0")
    assert not single.is_dir and single.entries == {"": ("f", 5)}
    assert single.stamps == {"": "5/2.25/3"}


def test_compare_reports_missing_kind_and_size() -> None:
    expected = TreeListing(True, {"a": ("f", 1), "b": ("f", 2), "c": ("d", 0), "d": ("f", 3)})
    actual = TreeListing(True, {"a": ("f", 1), "b": ("f", 9), "c": ("f", 0), "extra": ("f", 1)})
    assert compare(expected, actual) == [
        "size differs: b (2 vs 9 bytes)", "kind differs: c (d vs f)", "missing: d"]
    assert compare(expected, expected) == []
    assert compare(TreeListing(False, {"": ("f", 1)}), actual)  # file vs directory


def test_sweep_removes_only_what_unzip_left_unfinished(tmp_path: Path) -> None:
    from mvp_core.transfer_engine.unzip import sweep_unfinished_local

    src = make_session_tree(tmp_path / "src", n_audio=4)
    manifest = build_manifest(src)
    zip_path = tmp_path / "t.zip"
    build_zip(manifest, zip_path, root_name=src.name)
    zip_ns = os.stat(zip_path).st_mtime_ns
    dest = tmp_path / "dest"
    (dest / "Audio Files").mkdir(parents=True)
    killed = dest / "Audio Files" / "Kick_0000.wav"  # being written when unzip died
    killed.write_bytes(b"par")
    os.utime(killed, ns=(zip_ns + 10**9, zip_ns + 10**9))
    truncated = dest / "Audio Files" / "Kick_0001.wav"  # write error, mtime restored
    truncated.write_bytes(b"")
    os.utime(truncated, (OLD_MTIME + 1, OLD_MTIME + 1))
    old_version = dest / "Audio Files" / "Kick_0002.wav"  # not reached: an older take
    old_version.write_bytes(b"older take")
    os.utime(old_version, (OLD_MTIME - 3600, OLD_MTIME - 3600))
    complete = dest / "Audio Files" / "Kick_0003.wav"
    complete.write_bytes((src / "Audio Files" / "Kick_0003.wav").read_bytes())
    os.utime(complete, ns=(zip_ns + 10**9, zip_ns + 10**9))  # killed before its utime

    removed = sweep_unfinished_local(dest, manifest, zip_path)
    assert sorted(removed) == ["Audio Files/Kick_0000.wav", "Audio Files/Kick_0001.wav"]
    assert not killed.exists() and not truncated.exists()
    assert old_version.read_bytes() == b"older take" and complete.exists()
