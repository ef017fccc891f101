"""What an rsync, and the host it runs on, can do: probed once, then every argv adapts.

A Mac runs Apple's openrsync (macOS 15+) or rsync 2.6.9 (macOS <= 14), both protocol
29, with BSD tools; Linux runs GNU rsync 3.x. On first contact with an ssh host (one
ssh round trip, ``remote_sh.PROBE_HOST``) we learn the remote rsync's flavour, version
and protocol, which ``find``/``stat`` dialect it has, whether ``unzip`` exists (and
handles zip64), and which hash tools exist. A complete answer is cached per process
per host, port, user and rsync path (a Mac does not change its rsync between jobs); a
host missing a tool is asked again at the next job, so installing it needs no restart. The
local rsync is probed the same way (a worker on a Mac).

The flags chosen from it (``rsync_flags``):

- ``-s`` (``--protect-args``) only when both sides speak protocol >= 30 (GNU 3.x).
  Without it the remote shell parses the remote path: it is quoted once with
  ``shlex.quote``, and a GNU rsync >= 3.2.4 here is told ``--old-args`` so it does not
  escape it a second time (its own escaping turns a newline into a line continuation).
- ``--info=progress2 --no-inc-recursive`` when the local rsync is GNU >= 3.1 (both
  are local-side options; protocol 29 peers accept them). Otherwise no progress.
- Never ``--mkpath``, ``-A``/``-X``, ``--iconv``, ``--outbuf`` or
  ``--checksum-choice``: openrsync refuses them all.
- No ``--no-implied-dirs`` towards an rsync 2.6.9 (a receiver of that version stops
  on it with ``--files-from``): DIRECT's streams and ZIP_FIRST's as-is copies then send
  the folders of their files too (modes included; a read-only source folder can then
  refuse a later stream's file when the remote account is not root).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from dataclasses import dataclass

from mvp_core.transfer_engine import remote_sh
from mvp_core.transfer_engine.endpoints import SshEndpoint
from mvp_core.transfer_engine.errors import RemoteCommandMissingError
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.results import CancelToken
from mvp_core.transfer_engine.ssh import endpoint_key, raise_for_remote, run_remote

GNU, RSYNC2, OPENRSYNC, UNKNOWN = "gnu", "rsync-2", "openrsync", "unknown"
# Hash tool names, best first (content.py maps them to algorithms).
HASH_TOOLS = ("xxhsum", "sha256sum", "shasum", "md5sum", "md5")

_VERSION = re.compile(r"version\s+v?(\d+)\.(\d+)(?:\.(\d+))?")
_PROTOCOL = re.compile(r"protocol version\s+(\d+)")


@dataclass(frozen=True)
class RsyncInfo:
    """One rsync binary: flavour (GNU 3.x, rsync 2.x, openrsync), version, protocol."""

    flavour: str
    version: tuple[int, int, int]
    protocol: int
    banner: str = ""

    @property
    def protects_args(self) -> bool:
        """Understands ``-s``: GNU rsync 3.x (protocol 30+)."""
        return self.flavour == GNU and self.protocol >= 30

    @property
    def progress2(self) -> bool:
        """Prints ``--info=progress2`` (GNU >= 3.1)."""
        return self.flavour == GNU and self.version >= (3, 1, 0)

    @property
    def escapes_args(self) -> bool:
        """GNU >= 3.2.4 escapes remote args itself unless told ``--old-args``."""
        return self.flavour == GNU and self.version >= (3, 2, 4)

    def describe(self) -> str:
        name = {GNU: "rsync", RSYNC2: "rsync", OPENRSYNC: "openrsync"}.get(self.flavour, "rsync?")
        return f"{name} {'.'.join(map(str, self.version))} (protocol {self.protocol})"


def parse_rsync_version(text: str) -> RsyncInfo:
    """``rsync --version``'s first lines: GNU ("rsync  version 3.2.7  protocol version
    31"), Apple's 2.6.9, openrsync ("openrsync: protocol version 29")."""
    proto = _PROTOCOL.search(text)
    protocol = int(proto[1]) if proto else 0
    if "openrsync" in text:
        return RsyncInfo(OPENRSYNC, (2, 6, 9), protocol or 29, text.strip())
    ver = _VERSION.search(text)
    if not ver:
        return RsyncInfo(UNKNOWN, (0, 0, 0), protocol, text.strip())
    version = (int(ver[1]), int(ver[2]), int(ver[3] or 0))
    return RsyncInfo(GNU if version[0] >= 3 else RSYNC2, version, protocol, text.strip())


@dataclass(frozen=True)
class HostCapabilities:
    """What one ssh host (with its rsync) can do."""

    rsync: RsyncInfo | None  # None: the named rsync does not exist there
    rsync_command: str
    os: str = ""
    find: str = GNU  # gnu | bsd
    stat: str = GNU  # gnu | bsd | none
    unzip: bool = False
    zip64: bool = False
    hash_tools: tuple[str, ...] = ()
    dd: bool = False  # byte ranges of a big file on a long path need it (``ranges``)

    def describe(self) -> str:
        """One line for the DKU and job events."""
        rsync = self.rsync.describe() if self.rsync else f"no rsync ({self.rsync_command})"
        unzip = ("unzip (zip64)" if self.zip64 else "unzip") if self.unzip else "no unzip"
        hashing = ", ".join(self.hash_tools) or "no hash tool"
        return (f"{self.os or 'unknown OS'}: {rsync}; {self.find.upper()} find; {unzip}; "
                f"hashing: {hashing}")


def parse_probe(text: str, rsync_command: str) -> HostCapabilities:
    """``remote_sh.PROBE_HOST``'s output."""
    head, _, banner = text.partition("rsync:\n")
    facts: dict[str, list[str]] = {}
    for line in head.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            facts.setdefault(key.strip(), []).append(value.strip())

    def one(key: str, default: str = "") -> str:
        return facts.get(key, [default])[0]

    return HostCapabilities(
        rsync=parse_rsync_version(banner) if banner.strip() else None,
        rsync_command=rsync_command, os=one("os"), find=one("find", GNU),
        stat=one("stat", "none"), unzip=one("unzip") == "1", zip64=one("zip64") == "1",
        hash_tools=tuple(t for t in HASH_TOOLS if t in facts.get("hash", [])),
        dd=one("dd") == "1")


_cache: dict[tuple[object, ...], HostCapabilities] = {}
_asking: dict[tuple[object, ...], threading.Lock] = {}
_local: list[RsyncInfo] = []
_lock = threading.Lock()


def _key(endpoint: SshEndpoint) -> tuple[object, ...]:
    return (*endpoint_key(endpoint), endpoint.rsync_path)


def of_host(endpoint: SshEndpoint, options: EngineOptions,
            cancel: CancelToken | None = None) -> HostCapabilities:
    """The host's capabilities, probed on first use (one ssh round trip), then cached."""
    key = _key(endpoint)
    with _lock:
        if key in _cache:
            return _cache[key]
        asking = _asking.setdefault(key, threading.Lock())
    with asking:  # streams starting at once ask the host once, not once each
        with _lock:
            if key in _cache:
                return _cache[key]
        return _probe(endpoint, key, options, cancel)


def _probe(endpoint: SshEndpoint, key: tuple[object, ...], options: EngineOptions,
           cancel: CancelToken | None) -> HostCapabilities:
    command = endpoint.rsync_path or "rsync"
    result = run_remote(endpoint, ("sh", "-c", remote_sh.PROBE_HOST, "sh", command), options,
                        what="probe the host's tools", cancel=cancel, check=False,
                        capture_stdout=True)
    raise_for_remote(result, endpoint, "probe the host's tools")
    caps = parse_probe(result.stdout.decode("utf-8", "replace"), command)
    if caps.rsync is not None and caps.unzip and caps.hash_tools:
        # Only a complete answer is kept: a host missing something is asked again next
        # job, so installing the tool there needs no worker restart.
        with _lock:
            _cache[key] = caps
    return caps


def forget(endpoint: SshEndpoint | None = None) -> None:
    """Drop cached answers (all, or one host's): after the host was changed."""
    with _lock:
        if endpoint is None:
            _cache.clear()
        else:
            _cache.pop(_key(endpoint), None)


def local_rsync() -> RsyncInfo:
    """The rsync on this machine (probed once per process)."""
    with _lock:
        if _local:
            return _local[0]
    text = ""
    if shutil.which("rsync"):
        try:
            text = subprocess.run(["rsync", "--version"], capture_output=True, text=True,
                                  timeout=30, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            text = ""
    info = parse_rsync_version(text) if text else RsyncInfo(UNKNOWN, (0, 0, 0), 0)
    with _lock:
        _local[:] = [info]
    return info


def require_rsync(endpoint: SshEndpoint, caps: HostCapabilities) -> RsyncInfo:
    """The remote rsync, or a clear error naming what is missing and how to fix it."""
    if caps.rsync is None:
        hint = ("set the portal's rsync_path to the rsync it has (e.g. /opt/homebrew/bin/rsync)"
                if endpoint.rsync_path is None else "fix the portal's rsync_path")
        raise RemoteCommandMissingError(
            f"{caps.rsync_command} is not installed on {endpoint.host} (needed to run rsync "
            f"there): {hint}")
    return caps.rsync


def require_unzip(endpoint: SshEndpoint, caps: HostCapabilities) -> None:
    """ZIP_FIRST needs unzip on the target host: say so before any byte moves."""
    if not caps.unzip:
        raise RemoteCommandMissingError(
            f"unzip is not installed on {endpoint.host} (needed to unpack ZIP_FIRST "
            "archives): install Info-ZIP unzip there, or send with the DIRECT strategy")


@dataclass(frozen=True)
class RsyncFlags:
    """What one rsync between this machine and a remote (or two local paths) may use."""

    protect_args: bool = True
    old_args: bool = False
    progress2: bool = True
    # ``--no-implied-dirs`` with ``--files-from`` between a protocol-29 peer and us stops
    # with "protocol incompatibility" (generator.c): rsync 2.6.9 receiving (a push), and
    # our rsync 3 receiving from openrsync (a pull): such streams send the folders.
    no_implied_dirs: bool = True
    # ``--ignore-missing-args`` (GNU rsync >= 3.1) is passed on to a remote SENDER (a
    # pull): an older one stops with exit 12. A push keeps it (our rsync sends).
    sender_ignores_missing: bool = True

    @property
    def quote_remote(self) -> bool:
        """The remote shell parses the remote path: quote it once."""
        return not self.protect_args


# Both sides GNU rsync 3.x: every flag (the default of ``rsync.build_argv``).
GNU_FLAGS = RsyncFlags()


def rsync_flags(remote: SshEndpoint | None, options: EngineOptions,
                cancel: CancelToken | None = None) -> RsyncFlags:
    """Flags both sides understand (see the module doc)."""
    local = local_rsync()
    if remote is None:
        return RsyncFlags(protect_args=local.protects_args, progress2=local.progress2)
    peer = require_rsync(remote, of_host(remote, options, cancel))
    protect = local.protects_args and peer.protects_args
    return RsyncFlags(protect_args=protect, old_args=not protect and local.escapes_args,
                      progress2=local.progress2, no_implied_dirs=peer.flavour == GNU,
                      sender_ignores_missing=peer.flavour == GNU and peer.version >= (3, 1, 0))
