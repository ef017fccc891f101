"""ssh: argv construction, remote commands, and what ssh failures mean.

ssh joins the arguments after the destination and the remote shell parses them
again, so a remote command is passed as ONE argument built with ``shlex.join``.
Host-key checking is strict against the endpoint's known_hosts file and
BatchMode forbids any prompt: an unknown or changed host key is refused, never
accepted silently.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

from mvp_core.transfer_engine import remote_sh
from mvp_core.transfer_engine.endpoints import SshEndpoint
from mvp_core.transfer_engine.errors import (
    CommandFailedError,
    RemoteCommandMissingError,
    SshAuthError,
    SshConnectionError,
    TransferError,
)
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.results import CancelToken
from mvp_core.transfer_engine.runner import CommandResult, LineCallback, run_command

SSH_FAILED = 255
COMMAND_NOT_FOUND = 127

# (pattern in stderr, error class, message); first match wins. Checked for ssh's own
# exit code 255 and for tools that run over ssh (rsync exit 12/255).
_SSH_STDERR_RULES: tuple[tuple[re.Pattern[str], type[TransferError], str], ...] = (
    (re.compile(r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED"
                r"|No \S+ host key is known|host key for .* has changed", re.IGNORECASE),
     SshAuthError, "ssh host key not trusted (check the known_hosts file)"),
    (re.compile(r"Permission denied \((publickey|password|keyboard|gssapi|hostbased)"
                r"|Permission denied, please try again"
                r"|Too many authentication failures|no mutual signature", re.IGNORECASE),
     SshAuthError, "ssh authentication refused (check user and identity file)"),
    (re.compile(r"Load key .*: (invalid format|bad permissions|No such file)"
                r"|identity file .* not accessible|UNPROTECTED PRIVATE KEY", re.IGNORECASE),
     SshAuthError, "ssh identity file unusable"),
    (re.compile(r"Could not resolve hostname|Name or service not known", re.IGNORECASE),
     SshConnectionError, "ssh host name does not resolve"),
    (re.compile(r"Connection refused", re.IGNORECASE), SshConnectionError, "ssh connection refused"),
    (re.compile(r"Connection reset|Broken pipe|Connection closed|closed by remote host"
                r"|kex_exchange_identification", re.IGNORECASE),
     SshConnectionError, "ssh connection lost"),
    # "Timeout, server ... not responding" (ServerAlive), not a usage line's "--timeout=".
    (re.compile(r"timed out|No route to host|Network is unreachable|Timeout, server",
                re.IGNORECASE),
     SshConnectionError, "ssh host unreachable (timeout)"),
)
_NOT_FOUND = re.compile(
    r"(?P<cmd>[\w.+-]+): (command )?not found|env: '?(?P<cmd2>[\w.+-]+)'?: No such file",
)


def ssh_base_argv(endpoint: SshEndpoint, options: EngineOptions) -> tuple[str, ...]:
    """ssh and its options, without destination: also the value of rsync's ``-e``."""
    identity: tuple[str, ...] = ()
    if endpoint.identity_file is not None:
        identity = ("-i", str(endpoint.identity_file), "-o", "IdentitiesOnly=yes")
    known_hosts: tuple[str, ...] = ()
    if endpoint.known_hosts_file is not None:
        known_hosts = ("-o", f"UserKnownHostsFile={endpoint.known_hosts_file}")
    return (
        "ssh",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        *known_hosts,
        "-o", f"ConnectTimeout={options.ssh_connect_timeout_s}",
        "-o", "ServerAliveInterval=15",
        "-o", "ServerAliveCountMax=4",
        "-o", "LogLevel=ERROR",
        *identity,
        "-p", str(endpoint.port),
        *_control_argv(endpoint, options),
    )


def endpoint_key(endpoint: SshEndpoint) -> tuple[object, ...]:
    """What must match for a command to ride an endpoint's master: everything but the path."""
    return (endpoint.host, endpoint.port, endpoint.user, endpoint.identity_file,
            endpoint.known_hosts_file)


def _control_argv(endpoint: SshEndpoint, options: EngineOptions) -> tuple[str, ...]:
    """Use this job's master if it serves this endpoint; never become a master.

    ssh connects on its own if the socket is missing, so a dead master costs a
    connection, not the command.
    """
    control = options.ssh_control
    if control is None or control[0] != endpoint_key(endpoint):
        return ()
    return ("-o", f"ControlPath={control[1]}", "-o", "ControlMaster=no")


def rsync_rsh(endpoint: SshEndpoint, options: EngineOptions) -> str:
    """The ``-e`` value for rsync: rsync splits it like a shell would."""
    return shlex.join(ssh_base_argv(endpoint, options))


def remote_command_argv(
    endpoint: SshEndpoint, remote_argv: Sequence[str], options: EngineOptions
) -> tuple[str, ...]:
    """Full ssh argv running ``remote_argv`` on the endpoint's host, safely quoted."""
    return (*ssh_base_argv(endpoint, options), "--", endpoint.destination,
            shlex.join(remote_argv))


def classify_ssh_failure(exit_code: int, stderr_tail: str) -> tuple[type[TransferError], str] | None:
    """What an ssh-level failure means, from ssh's stderr; None if it is not ssh's."""
    for pattern, cls, message in _SSH_STDERR_RULES:
        if pattern.search(stderr_tail):
            return cls, message
    if exit_code == SSH_FAILED:
        return SshConnectionError, "ssh failed"
    return None


def missing_command(exit_code: int, stderr_tail: str) -> str | None:
    """Name of the remote program that is not installed, if that is the failure."""
    match = _NOT_FOUND.search(stderr_tail)
    if match:
        return match["cmd"] or match["cmd2"]
    if exit_code == COMMAND_NOT_FOUND:
        return "a remote command"
    return None


def raise_for_remote(result: CommandResult, endpoint: SshEndpoint, what: str) -> None:
    """Translate a failed remote command into the engine's error tree."""
    if result.exit_code == 0:
        return
    evidence = result.evidence()
    if result.exit_code == SSH_FAILED:
        cls, message = classify_ssh_failure(result.exit_code, result.stderr_tail) or (
            SshConnectionError, "ssh failed")
        raise cls(f"{message}: {endpoint.destination} port {endpoint.port}", **evidence)
    cmd = missing_command(result.exit_code, result.stderr_tail)
    if cmd:
        raise RemoteCommandMissingError(
            f"{cmd} is not installed on {endpoint.host} (needed to {what})", **evidence)
    raise CommandFailedError(f"{what} failed on {endpoint.host}", **evidence)


def run_remote(
    endpoint: SshEndpoint,
    remote_argv: Sequence[str],
    options: EngineOptions,
    *,
    what: str,
    cancel: CancelToken | None = None,
    check: bool = True,
    on_stdout_line: LineCallback | None = None,
    capture_stdout: bool = False,
    stop_with_us: bool = False,
    input_bytes: bytes | None = None,
) -> CommandResult:
    """Run one command on the endpoint's host; with ``check`` failures raise typed errors.

    ``stop_with_us``: the remote command is killed when our ssh goes away (cancel, or
    this process killed). Without it, a remote command that neither reads nor writes
    (unzip -q) runs on after the connection drops, since sshd sends no SIGHUP without
    a tty.
    """
    if stop_with_us:
        remote_argv = ("sh", "-c", remote_sh.STOP_WITH_US, "sh", *remote_argv)
    argv = remote_command_argv(endpoint, remote_argv, options)
    result = run_command(argv, cancel=cancel, on_stdout_line=on_stdout_line, what=what,
                         capture_stdout=capture_stdout, stdin_pipe=stop_with_us,
                         input_bytes=input_bytes)
    if check:
        raise_for_remote(result, endpoint, what)
    return result
