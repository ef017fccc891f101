"""Pure parsing of rsync banners and host probes, and the flags chosen from them."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from mvp_core.transfer_engine import capabilities as caps
from mvp_core.transfer_engine.endpoints import LocalEndpoint, SshEndpoint
from mvp_core.transfer_engine.errors import InvalidEndpointError
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.rsync import build_argv


@pytest.mark.parametrize(("banner", "flavour", "version", "protocol", "protects"), [
    ("rsync  version 3.2.7  protocol version 31\nCopyright (C) 1996-2022",
     caps.GNU, (3, 2, 7), 31, True),
    ("rsync  version 2.6.9  protocol version 29\nCopyright (C) 1996-2006",
     caps.RSYNC2, (2, 6, 9), 29, False),
    ("openrsync: protocol version 29\nrsync version 2.6.9 compatible",
     caps.OPENRSYNC, (2, 6, 9), 29, False),
    ("rsync  version v3.4.1  protocol version 32", caps.GNU, (3, 4, 1), 32, True),
    ("something else entirely", caps.UNKNOWN, (0, 0, 0), 0, False),
])
def test_rsync_banners(banner: str, flavour: str, version: tuple[int, int, int],
                       protocol: int, protects: bool) -> None:
    info = caps.parse_rsync_version(banner)
    assert (info.flavour, info.version, info.protocol) == (flavour, version, protocol)
    assert info.protects_args is protects


def test_probe_output_of_a_mac() -> None:
    text = ("os=Darwin\nfind=bsd\nstat=bsd\nunzip=1\nzip64=1\nhash=shasum\nhash=md5\n"
            "rsync:\nopenrsync: protocol version 29\nrsync version 2.6.9 compatible\n")
    host = caps.parse_probe(text, "rsync")
    assert host.rsync is not None and host.rsync.flavour == caps.OPENRSYNC
    assert (host.os, host.find, host.stat, host.unzip, host.zip64) == ("Darwin", "bsd", "bsd",
                                                                       True, True)
    assert host.hash_tools == ("shasum", "md5")
    assert host.describe() == ("Darwin: openrsync 2.6.9 (protocol 29); BSD find; unzip (zip64); "
                               "hashing: shasum, md5")
    bare = caps.parse_probe("os=Darwin\nfind=bsd\nrsync=missing\n", "/opt/homebrew/bin/rsync")
    assert bare.rsync is None and not bare.unzip and bare.hash_tools == ()
    assert "no rsync (/opt/homebrew/bin/rsync)" in bare.describe()


def test_argv_for_a_protocol_29_peer_quotes_the_remote_path_once() -> None:
    target = SshEndpoint(host="mac", user="studio", path=PurePosixPath("/Users/s/Sessão $x"),
                         rsync_path="/opt/homebrew/bin/rsync")
    flags = caps.RsyncFlags(protect_args=False, old_args=True)
    argv = build_argv(LocalEndpoint(Path("/src/a")), target, EngineOptions(), flags=flags)
    assert "-s" not in argv and "--old-args" in argv
    assert "--rsync-path=/opt/homebrew/bin/rsync" in argv
    assert argv[-1] == "studio@mac:'/Users/s/Sessão $x/'"
    # GNU on both sides: -s, and the path as it is (rsync carries it, no shell parses it).
    gnu = build_argv(LocalEndpoint(Path("/src/a")), target, EngineOptions())
    assert "-s" in gnu and "--old-args" not in gnu and gnu[-1] == "studio@mac:/Users/s/Sessão $x/"


@pytest.mark.parametrize("bad", ["rsync", "/usr/bin/rsync --daemon", "/a/../b", "/x;id",
                                 "/x$(id)", "/x\ny"])
def test_an_rsync_path_is_an_absolute_plain_path(bad: str) -> None:
    with pytest.raises(InvalidEndpointError, match="rsync_path"):
        SshEndpoint(host="mac", path=PurePosixPath("/x"), rsync_path=bad)
