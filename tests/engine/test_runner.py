"""runner: streaming, bounded tails, cancel kills the whole group, children die with us."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from mvp_core.transfer_engine.errors import RemoteCommandMissingError, TransferCancelledError
from mvp_core.transfer_engine.results import CancelToken
from mvp_core.transfer_engine.runner import run_command


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); look at its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_lines_split_on_cr_and_lf_and_tail_is_bounded() -> None:
    lines: list[str] = []
    script = "printf 'a\\rb\\nc\\n'; for i in $(seq 1 100); do echo err$i >&2; done; exit 3"
    result = run_command(["sh", "-c", script], on_stdout_line=lines.append, tail_lines=5)
    assert lines == ["a", "b", "c"]
    assert result.exit_code == 3
    assert result.stderr_tail.splitlines() == [f"err{i}" for i in range(96, 101)]


def test_capture_stdout_keeps_raw_bytes() -> None:
    result = run_command(["printf", "x\\ny\\0z\\r"], capture_stdout=True)
    assert result.stdout == b"x\ny\0z\r"


def test_missing_program_is_typed() -> None:
    with pytest.raises(RemoteCommandMissingError, match="not installed"):
        run_command(["ketter-no-such-program-xyz"])


def test_cancel_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    # The child starts a grandchild (like rsync starting ssh) and both ignore nothing.
    script = f"sleep 60 & echo $! > {pidfile}; wait"
    cancel = CancelToken()
    timer = threading.Timer(0.5, cancel.cancel)
    timer.start()
    started = time.monotonic()
    with pytest.raises(TransferCancelledError):
        run_command(["sh", "-c", script], cancel=cancel)
    timer.cancel()
    assert time.monotonic() - started < 10
    assert _wait_dead(int(pidfile.read_text()))


def test_cancel_before_start_starts_nothing(tmp_path: Path) -> None:
    cancel = CancelToken()
    cancel.cancel()
    marker = tmp_path / "ran"
    with pytest.raises(TransferCancelledError):
        run_command(["touch", str(marker)], cancel=cancel)
    assert not marker.exists()


def test_child_dies_when_the_python_process_is_killed(tmp_path: Path) -> None:
    """A worker kill -9'd must not leave its rsync running (PR_SET_PDEATHSIG)."""
    pidfile = tmp_path / "child.pid"
    program = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from mvp_core.transfer_engine.runner import run_command
        run_command(["sh", "-c", "echo $$ > {pidfile}; exec sleep 60"])
    """)
    proc = subprocess.Popen([sys.executable, "-c", program])
    try:
        deadline = time.monotonic() + 10
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert time.monotonic() < deadline, "child never started"
            time.sleep(0.05)
        child = int(pidfile.read_text())
        assert _alive(child)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert _wait_dead(child), "child outlived its kill -9'd parent"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
