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
from mvp_core.transfer_engine.runner import Conversation, run_command


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); look at its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # gone (reaped) while we looked
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


def _process_table() -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, argv) for every live process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if _alive(int(entry.name)):
            table[int(entry.name)] = (ppid, [a.decode(errors="replace") for a in argv if a])
    return table


def _descendants(root: int, table: dict[int, tuple[int, list[str]]]) -> set[int]:
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, (ppid, _) in table.items() if ppid in frontier} - found
        found |= frontier
    return found


def _is_rsync(argv: list[str]) -> bool:
    return bool(argv) and Path(argv[0]).name == "rsync"


def test_kill_9_of_a_worker_stops_rsync_on_both_sides(tmp_path: Path, sshd) -> None:  # type: ignore[no-untyped-def]
    """The worker's nightmare: kill -9 mid-transfer must not leave rsync writing."""
    from tests.fixtures.trees import make_session_tree

    src = make_session_tree(tmp_path / "src", n_audio=20, audio_size=64 * 1024)
    target = tmp_path / "target"
    program = textwrap.dedent(f"""
        import sys
        from pathlib import Path, PurePosixPath
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from mvp_core.transfer_engine.direct import run_transfer
        from mvp_core.transfer_engine.endpoints import LocalEndpoint, SshEndpoint
        from mvp_core.transfer_engine.job import TransferJob
        from mvp_core.transfer_engine.options import EngineOptions
        target = SshEndpoint(host={sshd.host!r}, port={sshd.port}, user={sshd.user!r},
                             path=PurePosixPath({str(target)!r}),
                             identity_file=Path({str(sshd.identity_file)!r}),
                             known_hosts_file=Path({str(sshd.known_hosts_file)!r}))
        run_transfer(TransferJob(LocalEndpoint(Path({str(src)!r})), target),
                     options=EngineOptions(bwlimit_kib_s=32))
    """)
    proc = subprocess.Popen([sys.executable, "-c", program])
    watched: set[int] = set()
    try:
        deadline = time.monotonic() + 60  # ssh handshakes are slow on a loaded CI box
        while True:  # until bytes flow: local rsync + its ssh, remote rsync server
            assert time.monotonic() < deadline, "transfer never got going"
            assert proc.poll() is None, "transfer ended before it could be killed"
            table = _process_table()
            local = {p for p in _descendants(proc.pid, table) if _is_rsync(table[p][1])}
            remote = {p for p in _descendants(sshd.process.pid, table)
                      if _is_rsync(table[p][1]) and "--server" in table[p][1]}
            if local and remote and any(target.rglob("*.wav")):
                watched = _descendants(proc.pid, table) | remote
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 15
        while alive := [p for p in watched if _alive(p)]:
            table = _process_table()
            assert time.monotonic() < deadline, f"left running: {[table.get(p) for p in alive]}"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in watched:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


# --- Conversation: print, wait for one reply, act only on it. ---

_ASK = ('printf "listing\\000\\000"; IFS= read -r nod || exit 5; [ "$nod" = go ] || exit 5; '
        ': > "$1"; echo acted')


def test_conversation_acts_on_go_only(tmp_path: Path) -> None:
    flag = tmp_path / "acted"
    talk = Conversation(("sh", "-c", _ASK, "sh", str(flag)), what="ask")
    assert talk.read_until(b"\0\0") == b"listing"
    assert not flag.exists()  # it waits for the word
    talk.reply(b"go\n")
    result = talk.finish()
    assert result.exit_code == 0 and flag.exists()
    assert result.stdout.endswith(b"acted\n")


@pytest.mark.parametrize("how", ["abort", "no", "finish without reply"])
def test_conversation_without_go_does_nothing(tmp_path: Path, how: str) -> None:
    flag = tmp_path / "acted"
    talk = Conversation(("sh", "-c", _ASK, "sh", str(flag)), what="ask")
    assert talk.read_until(b"\0\0") == b"listing"
    if how == "abort":
        talk.abort()
        result = talk.finish()
    elif how == "no":
        talk.reply(b"no\n")
        result = talk.finish()
    else:
        result = talk.finish()  # closes stdin first: EOF is "no"
    assert result.exit_code == 5 and not flag.exists()


def test_conversation_that_ends_before_the_mark(tmp_path: Path) -> None:
    talk = Conversation(("sh", "-c", 'echo "no such dir" >&2; exit 4'), what="ask")
    assert talk.read_until(b"\0\0") is None
    result = talk.finish()
    assert result.exit_code == 4 and "no such dir" in result.stderr_tail


def test_conversation_cancelled_while_waiting_for_output(tmp_path: Path) -> None:
    cancel = CancelToken()
    talk = Conversation(("sh", "-c", "sleep 30; printf 'x\\000\\000'"), what="ask")
    threading.Timer(0.3, cancel.cancel).start()
    started = time.monotonic()
    with pytest.raises(TransferCancelledError):
        talk.read_until(b"\0\0", cancel)
    assert time.monotonic() - started < 10
    assert talk.finish().exit_code != 0
