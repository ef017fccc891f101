"""Where a transfer reads from or writes to: a local path or a path on an SSH host.

Parsing refuses hosts and users that could be read as options (leading ``-``)
before any process starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mvp_core.transfer_engine.errors import InvalidEndpointError

# user@host:port:/path or host:/path; a bare path (no colon before the first slash) is local.
_SSH_SPEC = re.compile(
    r"^(?:(?P<user>[^@/:\s]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^@/:\s\[\]]+)(?::(?P<port>\d+))?:(?P<path>/.*)$"
)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.\[\]:%-]+$")
# A portal's remote rsync: an absolute path, nothing a shell would read twice.
_RSYNC_PATH = re.compile(r"^/[A-Za-z0-9_.+/-]+$")


@dataclass(frozen=True)
class LocalEndpoint:
    """A path on the machine that runs the engine."""

    path: Path

    @property
    def is_remote(self) -> bool:
        return False

    @property
    def name(self) -> str:
        """The basename a transfer of this source creates under the target."""
        return self.path.name

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class SshEndpoint:
    """A path on an SSH host, with the key and known_hosts file used to reach it."""

    host: str
    path: PurePosixPath
    user: str | None = None
    port: int = 22
    identity_file: Path | None = None
    known_hosts_file: Path | None = None
    # The remote rsync when it is not the first ``rsync`` on the host's PATH (a Mac's
    # Homebrew rsync in /opt/homebrew/bin, which a non-interactive ssh PATH lacks).
    rsync_path: str | None = None

    def __post_init__(self) -> None:
        validate_ssh_name("host", self.host)
        if self.rsync_path is not None:
            validate_rsync_path(self.rsync_path)
        if self.user is not None:
            validate_ssh_name("user", self.user)
        if not 0 < self.port < 65536:
            raise InvalidEndpointError(f"ssh port out of range: {self.port}")
        if not self.path.is_absolute():
            raise InvalidEndpointError(f"remote path must be absolute: {self.path}")

    @property
    def is_remote(self) -> bool:
        return True

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def destination(self) -> str:
        """``user@host`` as ssh and rsync want it."""
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        port = f":{self.port}" if self.port != 22 else ""
        return f"{self.destination}{port}:{self.path}"


Endpoint = LocalEndpoint | SshEndpoint


def validate_ssh_name(kind: str, value: str) -> None:
    """Refuse a host or user that ssh could parse as an option or that holds odd bytes."""
    if not value or value.startswith("-") or not _SAFE_NAME.match(value):
        raise InvalidEndpointError(f"invalid ssh {kind}: {value!r}")


def validate_rsync_path(value: str) -> None:
    """An absolute path of plain characters: it is run by the remote shell as is."""
    if not _RSYNC_PATH.match(value) or "/../" in f"{value}/":
        raise InvalidEndpointError(
            f"invalid rsync_path {value!r}: an absolute path such as /opt/homebrew/bin/rsync")


def parse_endpoint(
    spec: str,
    *,
    identity_file: Path | None = None,
    known_hosts_file: Path | None = None,
) -> Endpoint:
    """Parse ``/local/path`` or ``[user@]host[:port]:/path`` into an endpoint."""
    if not spec:
        raise InvalidEndpointError("empty endpoint")
    if spec.startswith(("/", ".")) or ":" not in spec.split("/", 1)[0]:
        return LocalEndpoint(Path(spec).expanduser())
    match = _SSH_SPEC.match(spec)
    if not match:
        raise InvalidEndpointError(
            f"cannot parse endpoint {spec!r}: expected /path or [user@]host[:port]:/abs/path"
        )
    host = match["host"].strip("[]")
    return SshEndpoint(
        host=host,
        user=match["user"],
        port=int(match["port"]) if match["port"] else 22,
        path=PurePosixPath(match["path"]),
        identity_file=identity_file,
        known_hosts_file=known_hosts_file,
    )
