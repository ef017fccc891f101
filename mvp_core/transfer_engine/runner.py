"""The only place in the engine that starts processes.

Why one module: every child must be started the same careful way.

- argv lists only (never a shell), stdin closed;
- stdout and stderr streamed and split on ``\\n`` *and* ``\\r`` (rsync's
  ``--info=progress2`` rewrites one line with carriage returns), so progress is
  fed as it happens and a bounded stderr tail is kept for the error message;
- each child leads its own session (process group), so a cancel kills rsync *and*
  the ssh it spawned: SIGTERM first (rsync then removes its temp files), SIGKILL
  after a grace period;
- ``PR_SET_PDEATHSIG(SIGKILL)``: if the Python process dies (a worker kill -9'd),
  the kernel kills the child, so no orphan rsync keeps writing. The signal fires
  when the *thread* that forked dies; ``run_command`` waits for the child in that
  same thread, so a thread pool worker cannot exit while its child runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO, TypedDict

from mvp_core.transfer_engine.errors import (
    CommandFailedError,
    RemoteCommandMissingError,
    TransferCancelledError,
)
from mvp_core.transfer_engine.libc import LIBC
from mvp_core.transfer_engine.results import CancelToken

LineCallback = Callable[[str], None]

_PR_SET_PDEATHSIG = 1
_POLL_S = 0.1
_TERM_GRACE_S = 3.0
_libc = LIBC


@dataclass(frozen=True)
class CommandResult:
    """What a finished child left behind."""

    argv: tuple[str, ...]
    exit_code: int
    stdout_tail: str
    stderr_tail: str
    duration_s: float
    stdout: bytes = b""  # whole stdout, only when run with ``capture_stdout``

    def evidence(self) -> Evidence:
        """The keyword arguments every ``TransferError`` takes, from this result."""
        return {"argv": self.argv, "exit_code": self.exit_code, "stderr_tail": self.stderr_tail}


class Evidence(TypedDict):
    argv: tuple[str, ...]
    exit_code: int
    stderr_tail: str


def _child_setup(parent_pid: int) -> Callable[[], None]:
    """preexec_fn: die with the parent; runs in the child between fork and exec."""

    def setup() -> None:
        if _libc is not None:
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died before prctl took effect: do not outlive it.
        if os.getppid() != parent_pid:
            os._exit(1)

    return setup


def _pump(stream: object, tail: deque[str], on_line: LineCallback | None) -> None:
    """Read a pipe to EOF, splitting on \\n and \\r; keep the last lines in ``tail``."""
    buf = b""
    read = stream.read1  # type: ignore[attr-defined]
    while True:
        chunk = read(65536)
        if not chunk:
            break
        buf += chunk
        while True:
            cut = min((i for i in (buf.find(b"\n"), buf.find(b"\r")) if i >= 0), default=-1)
            if cut < 0:
                break
            raw, buf = buf[:cut], buf[cut + 1:]
            if raw:
                _emit(raw, tail, on_line)
        if len(buf) > 1 << 20:  # a pathological line without newline: keep it bounded
            _emit(buf, tail, on_line)
            buf = b""
    if buf:
        _emit(buf, tail, on_line)


def _capture(stream: object, sink: list[bytes]) -> None:
    """Read a pipe to EOF unchanged (NUL-separated listings must not be split on \\n)."""
    read = stream.read1  # type: ignore[attr-defined]
    while True:
        chunk = read(65536)
        if not chunk:
            break
        sink.append(chunk)


def _feed(stream: object, data: bytes) -> None:
    """Write ``data`` to a child's stdin and close it (EOF ends the child's input)."""
    try:
        stream.write(data)  # type: ignore[attr-defined]
        stream.close()  # type: ignore[attr-defined]
    except (OSError, ValueError):  # the child exited early: its exit code says why
        pass


def _feed_from(stream: object, feed: Callable[[BinaryIO], None]) -> None:
    """Let ``feed`` write a child's stdin (a byte range of a big file), then close it."""
    try:
        feed(stream)  # type: ignore[arg-type]
    except (OSError, ValueError):  # the child exited early: its exit code says why
        pass
    finally:
        try:
            stream.close()  # type: ignore[attr-defined]
        except (OSError, ValueError):
            pass


def _emit(raw: bytes, tail: deque[str], on_line: LineCallback | None) -> None:
    line = raw.decode("utf-8", "replace")
    tail.append(line)
    if on_line is not None:
        try:
            on_line(line)
        except Exception:  # noqa: BLE001, S110 - a broken callback must not wedge the pipe
            pass


def _spawn(argv: tuple[str, ...], *, stdin: int, output: int, cwd: str | None = None,
           stdout: int | None = None) -> subprocess.Popen[bytes]:
    """Start a child the one careful way: own process group, dies with us; a missing
    program becomes ``RemoteCommandMissingError``."""
    try:
        return subprocess.Popen(
            argv, stdin=stdin, stdout=output if stdout is None else stdout, stderr=output,
            cwd=cwd,
            start_new_session=True,
            # Only prctl + getppid run between fork and exec: async-signal-safe enough,
            # and the one way to tie the child's life to ours (see module docstring).
            preexec_fn=_child_setup(os.getpid()),  # noqa: PLW1509
        )
    except FileNotFoundError as exc:
        raise RemoteCommandMissingError(
            f"{argv[0]} is not installed on this machine", argv=argv) from exc
    except OSError as exc:
        raise CommandFailedError(f"cannot start {argv[0]}: {exc}", argv=argv) from exc


def _await_exit(proc: subprocess.Popen[bytes], exited: threading.Event,
                cancel: CancelToken | None) -> bool:
    """Wait until ``proc`` exits, or kill its group when ``cancel`` fires (True then).

    Woken the moment the child exits (``_reaper``): ``Popen.wait(timeout)`` polls with
    sleeps of up to 50 ms, a cost every short remote command paid (~20 ms on average).
    """
    while not exited.wait(_POLL_S):
        if cancel is not None and cancel.cancelled:
            _kill_group(proc)
            return True
    return False


def _reaper(proc: subprocess.Popen[bytes]) -> threading.Event:
    """An event set as soon as ``proc`` has exited (a thread blocks in ``wait()``)."""
    exited = threading.Event()

    def reap() -> None:
        try:
            proc.wait()
        finally:
            exited.set()

    threading.Thread(target=reap, name="ketter-reap", daemon=True).start()
    return exited


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child's process group, SIGKILL it if still alive after a grace period."""
    for sig, grace in ((signal.SIGTERM, _TERM_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            # The leader is gone; make sure its helpers (ssh) are too.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return
        except subprocess.TimeoutExpired:
            continue


def run_command(
    argv: Sequence[str],
    *,
    cancel: CancelToken | None = None,
    on_stdout_line: LineCallback | None = None,
    on_stderr_line: LineCallback | None = None,
    cwd: str | None = None,
    tail_lines: int = 40,
    what: str | None = None,
    capture_stdout: bool = False,
    stdin_pipe: bool = False,
    input_bytes: bytes | None = None,
    stdin_from: Callable[[BinaryIO], None] | None = None,
    stdout_to: int | None = None,
) -> CommandResult:
    """Run ``argv`` to completion and return its exit code and output tails.

    Does not judge the exit code (callers map it through their tool's table).
    ``stdin_pipe`` gives the child a stdin that stays open (never written) until it
    ends: a remote command can watch it to learn that we were killed or cancelled.
    ``input_bytes``: written to the child's stdin (from a thread), which is then closed.
    ``stdin_from``: called (in a thread) with the child's stdin to write it, e.g. a byte
    range of a big file, streamed; closed after. ``stdout_to``: a file descriptor the
    child writes its stdout into directly (a byte range landing in a file, no copy here).
    Raises ``TransferCancelledError`` if ``cancel`` fires (the child group is
    killed first) and ``RemoteCommandMissingError`` if the program is not installed.
    """
    argv = tuple(argv)
    label = what or argv[0]
    if cancel is not None and cancel.cancelled:
        raise TransferCancelledError(f"cancelled before {label} started", argv=argv)
    started = time.monotonic()
    piped = stdin_pipe or input_bytes is not None or stdin_from is not None
    proc = _spawn(argv, stdin=subprocess.PIPE if piped else subprocess.DEVNULL,
                  output=subprocess.PIPE, cwd=cwd, stdout=stdout_to)

    out_tail: deque[str] = deque(maxlen=tail_lines)
    err_tail: deque[str] = deque(maxlen=tail_lines)
    captured: list[bytes] = []
    out_reader = (
        threading.Thread(target=_capture, args=(proc.stdout, captured), daemon=True)
        if capture_stdout
        else threading.Thread(target=_pump, args=(proc.stdout, out_tail, on_stdout_line),
                              daemon=True)
    )
    pumps = [
        *((out_reader,) if stdout_to is None else ()),
        threading.Thread(target=_pump, args=(proc.stderr, err_tail, on_stderr_line), daemon=True),
    ]
    if input_bytes is not None:
        pumps.append(threading.Thread(target=_feed, args=(proc.stdin, input_bytes), daemon=True))
    if stdin_from is not None:
        pumps.append(threading.Thread(target=_feed_from, args=(proc.stdin, stdin_from),
                                      daemon=True))
    for t in pumps:
        t.start()
    exited = _reaper(proc)
    cancelled = False
    try:
        cancelled = _await_exit(proc, exited, cancel)
    finally:
        if proc.returncode is None:  # KeyboardInterrupt or any other escape
            _kill_group(proc)
        for t in pumps:
            t.join(timeout=5.0)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:  # stdin: the child is gone, nothing to flush
                    pass

    result = CommandResult(
        argv=argv,
        exit_code=proc.returncode if proc.returncode is not None else -9,
        stdout_tail="\n".join(out_tail),
        stderr_tail="\n".join(err_tail),
        duration_s=time.monotonic() - started,
        stdout=b"".join(captured),
    )
    if cancelled:
        raise TransferCancelledError(
            f"cancelled during {label}", argv=argv, exit_code=result.exit_code,
            stderr_tail=result.stderr_tail,
        )
    return result


def start_background(argv: Sequence[str]) -> subprocess.Popen[bytes]:
    """Start a long-lived helper (an ssh master) the same careful way as ``run_command``.

    Own process group, dies with the thread that started it (PR_SET_PDEATHSIG), no
    pipes (nobody reads them, so they could never fill and block it). The caller
    must end it with ``stop_background`` from the same thread.
    """
    return _spawn(tuple(argv), stdin=subprocess.DEVNULL, output=subprocess.DEVNULL)


def stop_background(proc: subprocess.Popen[bytes]) -> None:
    """End a helper from ``start_background`` and its whole process group; reap it."""
    if proc.poll() is None:
        _kill_group(proc)
    else:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if proc.returncode is None:
        proc.wait()


class Conversation:
    """A child that prints, waits for one reply on stdin, then acts on it.

    Why: over ssh every new remote command costs about two round trips before it
    starts; a script that lists a tree, waits for our verdict and then renames it does
    verify and deliver in one session. Started like ``run_command`` (own process group,
    PDEATHSIG), so the caller must wait for it (``finish``) in the thread that started
    it. If we die or ``abort``, its stdin closes and the script must treat that EOF as
    "no": nothing is done on a reply that never came.
    """

    def __init__(self, argv: Sequence[str], *, what: str, tail_lines: int = 40) -> None:
        self.argv = tuple(argv)
        self.what = what
        self._started = time.monotonic()
        self._proc = _spawn(self.argv, stdin=subprocess.PIPE, output=subprocess.PIPE)
        self._out = bytearray()
        self._err_tail: deque[str] = deque(maxlen=tail_lines)
        self._lock = threading.Lock()
        self._seen = threading.Condition(self._lock)
        self._eof = False
        self._exited = _reaper(self._proc)
        self._pumps = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=_pump, args=(self._proc.stderr, self._err_tail, None),
                             daemon=True),
        ]
        for t in self._pumps:
            t.start()
        self._replied = False

    def _read_stdout(self) -> None:
        read = self._proc.stdout.read1  # type: ignore[union-attr]
        while True:
            chunk = read(65536)
            with self._seen:
                if chunk:
                    self._out += chunk
                else:
                    self._eof = True
                self._seen.notify_all()
            if not chunk:
                return

    def read_until(self, sentinel: bytes, cancel: CancelToken | None = None) -> bytes | None:
        """Output up to ``sentinel`` (excluded); None if the child ended without it."""
        searched = 0
        with self._seen:
            while True:
                cut = self._out.find(sentinel, searched)
                if cut >= 0:
                    return bytes(self._out[:cut])
                searched = max(0, len(self._out) - len(sentinel) + 1)
                if self._eof:
                    return None
                self._seen.wait(_POLL_S)
                if cancel is not None and cancel.cancelled:
                    break
        self.abort()
        raise TransferCancelledError(f"cancelled during {self.what}", argv=self.argv)

    def reply(self, data: bytes) -> None:
        """Send the one reply and close stdin (EOF ends the child's read)."""
        if self._replied:
            return
        self._replied = True
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            stdin.write(data)
            stdin.close()
        except OSError:  # the child is gone; ``finish`` reports how it ended
            pass

    def abort(self) -> None:
        """No reply (stdin closed: the child must do nothing), then wait for it."""
        self.reply(b"")
        if not self._exited.wait(_TERM_GRACE_S):
            _kill_group(self._proc)
        self.finish()

    def finish(self, cancel: CancelToken | None = None) -> CommandResult:
        """Wait for the child to end; its exit code and all it printed."""
        self.reply(b"")  # never leave it waiting for a reply
        _await_exit(self._proc, self._exited, cancel)
        if self._proc.returncode is None:
            _kill_group(self._proc)
        for t in self._pumps:
            t.join(timeout=5.0)
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream is not None:
                stream.close()
        with self._seen:
            out = bytes(self._out)
        return CommandResult(
            argv=self.argv,
            exit_code=self._proc.returncode if self._proc.returncode is not None else -9,
            stdout_tail="\n".join(out.decode("utf-8", "replace").splitlines()[-40:]),
            stderr_tail="\n".join(self._err_tail),
            duration_s=time.monotonic() - self._started,
            stdout=out,
        )
