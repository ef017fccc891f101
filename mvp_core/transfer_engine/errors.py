"""Every failure the engine reports, as one tree rooted at ``TransferError``.

    TransferError
    ├── InvalidEndpointError     bad spec, host/user that looks like an option
    ├── SourceMissingError       source path does not exist              (permanent)
    ├── TargetNotWritableError   target cannot be created or written      (permanent)
    ├── TargetExistsError        target/<name> exists, on_existing=fail   (permanent)
    ├── SourceNotDeletableError  a move's source could not be emptied     (permanent)
    ├── NoSpaceError             disk full on either side                 (permanent)
    ├── SshAuthError             key refused / host key unknown or wrong  (permanent)
    ├── SshConnectionError       cannot reach host, connection lost       (transient)
    ├── RemoteCommandMissingError rsync/unzip absent on the remote host   (permanent)
    ├── VerificationError        destination does not match the manifest  (permanent)
    │   └── SourceChangedError   a source file changed while the job ran  (permanent)
    ├── TransferCancelledError   the caller asked to stop                 (final)
    ├── UnsupportedTreeError     something the strategy cannot carry      (permanent)
    └── CommandFailedError       a tool failed otherwise                  (see .transient)

Each error carries its evidence (argv with secrets masked, exit code, stderr tail)
and its ``str()`` reads well in a job event. ``transient`` tells the worker whether
another attempt can help.
"""

from __future__ import annotations

from collections.abc import Sequence


class TransferError(Exception):
    """Base of every engine error."""

    code: str = "transfer_error"
    transient: bool = False

    def __init__(
        self,
        message: str,
        *,
        argv: Sequence[str] | None = None,
        exit_code: int | None = None,
        stderr_tail: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.argv = tuple(argv) if argv is not None else None
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail

    def __str__(self) -> str:
        parts = [self.message]
        if self.exit_code is not None:
            parts.append(f"(exit {self.exit_code})")
        if self.stderr_tail:
            last = self.stderr_tail.strip().splitlines()[-1:] or [""]
            parts.append(f"— {last[0][:300]}")
        return " ".join(parts)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready evidence for a job event."""
        return {
            "error_type": type(self).__name__,
            "code": self.code,
            "message": self.message,
            "transient": self.transient,
            "exit_code": self.exit_code,
            "argv": list(self.argv) if self.argv else None,
            "stderr_tail": self.stderr_tail[-2000:],
        }


class InvalidEndpointError(TransferError, ValueError):
    code = "invalid_endpoint"


class SourceMissingError(TransferError):
    code = "source_missing"


class TargetNotWritableError(TransferError):
    code = "target_not_writable"


class TargetExistsError(TransferError):
    """``target/<name>`` already exists and the job did not say replace or merge."""

    code = "target_exists"


class SourceNotDeletableError(TransferError):
    """A move whose source this account could not delete: refused before any byte moves."""

    code = "source_not_deletable"


class NoSpaceError(TransferError):
    code = "no_space"


class SshAuthError(TransferError):
    code = "ssh_auth"


class SshConnectionError(TransferError):
    code = "ssh_connection"
    transient = True


class RemoteCommandMissingError(TransferError):
    code = "remote_command_missing"


class VerificationError(TransferError):
    code = "verification_failed"


class SourceChangedError(VerificationError):
    """A source file changed (size, mtime or inode) between the time it was read and
    the rename or its deletion: it is never deleted; the error names it."""

    code = "source_changed"


class TransferCancelledError(TransferError):
    code = "cancelled"


class UnsupportedTreeError(TransferError):
    code = "unsupported_tree"


class CommandFailedError(TransferError):
    code = "command_failed"

    def __init__(self, message: str, *, transient: bool = False, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.transient = transient
