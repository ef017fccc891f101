"""The ``ketter`` command as an operator runs it, against a real stack: uvicorn API,
arq worker, Postgres, Redis and sshd. Every call is a subprocess of the installed
console script; outputs are read as the operator (or a script with ``--json``) would.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.fixtures.sshd import SshServer
from tests.fixtures.stack import BIN, ApiProcess, Stack, free_port, wait_until
from tests.fixtures.trees import assert_trees_identical, make_session_tree

KETTER = str(BIN / "ketter")


def ketter(api: ApiProcess | str, *args: str, timeout: float = 90
           ) -> subprocess.CompletedProcess[str]:
    url = api if isinstance(api, str) else api.url
    env = {k: v for k, v in os.environ.items() if not k.startswith("KETTER_")}
    env.update(KETTER_API_URL=url, COLUMNS="200", NO_COLOR="1")
    return subprocess.run([KETTER, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)


def as_json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ketter: error: ") and "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _tree(parent: Path, name: str, n_files: int, size: int) -> Path:
    root = parent / name / "Audio Files"
    root.mkdir(parents=True)
    for i in range(n_files):
        (root / f"Take_{i:03d}.wav").write_bytes(os.urandom(size))
    return parent / name


def _portals(api: ApiProcess, root: Path, sshd: SshServer) -> dict[str, Path]:
    src, dst, remote = root / "src", root / "dst", root / "remote"
    for d in (src, dst, remote):
        d.mkdir(parents=True)
    added = ketter(api, "portals", "add", "lab", str(src))
    assert added.returncode == 0 and "portal 1 lab" in added.stdout, added.stderr
    assert ketter(api, "portals", "add", "local-dst", str(dst)).returncode == 0
    ssh = ketter(api, "portals", "add", "srvtrf", sshd.spec(remote),
                 "--identity", str(sshd.identity_file),
                 "--known-hosts", str(sshd.known_hosts_file))
    assert ssh.returncode == 0, ssh.stderr
    return {"src": src, "dst": dst, "remote": remote}


def test_operator_day_submit_watch_events_portals(ketter_stack: Stack, tmp_path: Path,
                                                  sshd: SshServer) -> None:
    stack = ketter_stack
    api = stack.start_api()
    stack.start_worker(max_attempts=1)
    paths = _portals(api, tmp_path / "portals", sshd)

    listed = as_json(ketter(api, "portals", "list", "--json"))
    assert [p["name"] for p in listed] == ["lab", "local-dst", "srvtrf"]
    table = ketter(api, "portals", "list")
    assert f"{sshd.user}@{sshd.host}:{sshd.port}:{paths['remote']}" in table.stdout
    assert as_json(ketter(api, "portals", "show", "srvtrf", "--json"))["port"] == sshd.port

    # Submit and watch to DONE (not a terminal: plain lines, then the outcome).
    mix = make_session_tree(paths["src"], "Mix A", n_audio=6)
    done = ketter(api, "jobs", "submit", "--from", "lab:Mix A", "--to", "srvtrf:deliveries",
                  "--watch")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "job 1 submitted" in done.stdout
    assert "job 1 DONE: 12 files" in done.stdout and "/s)" in done.stdout
    assert_trees_identical(mix, paths["remote"] / "deliveries" / "Mix A")
    shown = as_json(ketter(api, "jobs", "show", "1", "--json"))
    assert shown["status"] == "DONE" and shown["phase"] is None and shown["eta_s"] is None
    human = ketter(api, "jobs", "show", "1").stdout
    assert "lab:Mix A" in human and "srvtrf:deliveries" in human and "12 files" in human
    events = as_json(ketter(api, "jobs", "events", "1", "--json"))
    assert [e["event_type"] for e in events][:4] == ["created", "queued", "started", "plan"]
    assert events[-1]["event_type"] == "done" or any(
        e["event_type"] == "done" for e in events)
    assert "done" in ketter(api, "jobs", "events", "1").stdout
    jobs = as_json(ketter(api, "jobs", "list", "--json"))
    assert [j["id"] for j in jobs] == [1]
    assert "DONE" in ketter(api, "jobs", "list").stdout

    # The manifest (the delivery receipt), and a clean one-line error for no such job.
    assert "checksum (xxh128)" in human
    manifest = ketter(api, "jobs", "manifest", "1", "--json")
    assert manifest.returncode == 0, manifest.stderr
    body = json.loads(manifest.stdout)
    assert body["job_id"] == 1 and len(body["files"]) == 12 and body["algorithm"] == "xxh128"
    one_error_line(ketter(api, "jobs", "manifest", "999"), "999")
    as_csv = ketter(api, "jobs", "manifest", "1", "--csv")
    assert as_csv.returncode == 0 and as_csv.stdout.count("\n") == 13  # header + 12 files

    # Edit the ssh portal to a port nobody listens on: the next job FAILS, watch says so.
    dead_port = str(free_port())
    edited = ketter(api, "portals", "edit", "srvtrf",
                    "--location", f"{sshd.user}@{sshd.host}:{dead_port}:{paths['remote']}")
    assert edited.returncode == 0 and f":{dead_port}:" in edited.stdout, edited.stderr
    failed = ketter(api, "jobs", "submit", "--from", "lab:Mix A", "--to", "srvtrf:again",
                    "--watch")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "job 2 FAILED" in failed.stdout and "Ssh" in failed.stdout
    assert ketter(api, "jobs", "watch", "2").returncode == 1  # already ended: same answer
    health = as_json(ketter(api, "health", "--json"))
    assert health["jobs_last_24h"]["DONE"] == 1 and health["jobs_last_24h"]["FAILED"] == 1
    assert "1 FAILED" in ketter(api, "health").stdout

    # Removing portals: refused while a job waits on it, allowed once jobs have ended.
    fresh = ketter(api, "portals", "add", "spare", str(paths["dst"]))
    assert fresh.returncode == 0
    assert ketter(api, "portals", "rm", "spare").returncode == 0
    assert "spare" not in ketter(api, "portals", "list").stdout
    assert ketter(api, "portals", "rm", "srvtrf").returncode == 0
    assert ketter(api, "jobs", "show", "2", "--json").returncode == 0  # history kept

    # Errors: one line, non-zero, the reason (404, 422 with its field, API down).
    one_error_line(ketter(api, "jobs", "show", "4242"), "job 4242 not found")
    one_error_line(ketter(api, "jobs", "submit", "--from", "lab:../etc", "--to", "local-dst"),
                   "invalid request", "source_path")
    one_error_line(ketter(api, "jobs", "submit", "--from", "nope:x", "--to", "local-dst"),
                   "no portal named 'nope'")
    one_error_line(ketter(api, "portals", "add", "x", "relative/path"), "absolute")
    one_error_line(ketter(f"http://127.0.0.1:{free_port()}", "jobs", "list"),
                   "cannot reach the Ketter API")
    # Per job: sizes only, and an ASC MHL asked for (not written: it needs content hashes).
    quick = as_json(ketter(api, "jobs", "submit", "--from", "lab:Mix A", "--to",
                           "local-dst:quick", "--verify", "size", "--mhl", "--json"))
    assert quick["verify"] == "size" and quick["write_mhl"] is True


def test_cancel_from_the_command_line(ketter_stack: Stack, tmp_path: Path,
                                      sshd: SshServer) -> None:
    stack = ketter_stack
    api = stack.start_api()
    stack.start_worker(rsync_bwlimit_kib_s=512)
    paths = _portals(api, tmp_path / "portals", sshd)
    # 64 s at 512 KiB/s, cancelled below: the watch must start and be stopped while the
    # job still runs, however slow the machine (8 MiB, 16 s, once ended first under load).
    _tree(paths["src"], "Stems", n_files=1, size=32 * 1024 * 1024)
    job = as_json(ketter(api, "jobs", "submit", "--from", "lab:Stems", "--to", "srvtrf:",
                         "--strategy", "direct", "--json"))
    wait_until(lambda: as_json(ketter(api, "jobs", "show", str(job["id"]), "--json")
                               )["progress_bytes"] > 0, timeout=30, interval=0.3,
               what="the job to move bytes")
    # Ctrl-C on a watch stops the watching, not the job.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KETTER_")}
    env["KETTER_API_URL"] = api.url
    # As from a terminal: SIGINT at its default, whatever this test's parent left it at
    # (an `&` in a non-interactive shell starts us with SIGINT ignored, and an ignored
    # signal stays ignored across exec).
    as_on_a_terminal = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                        "os.execv(sys.argv[1], sys.argv[1:])")
    watching = subprocess.Popen([sys.executable, "-c", as_on_a_terminal, str(KETTER), "jobs",
                                 "watch", str(job["id"])], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    watching.send_signal(signal.SIGINT)
    _out, err = watching.communicate(timeout=15)
    assert watching.returncode == 130, err
    assert f"stopped watching; job {job['id']} goes on" in err and "Traceback" not in err
    assert as_json(ketter(api, "jobs", "show", str(job["id"]), "--json"))["status"] == "RUNNING"

    cancel = ketter(api, "jobs", "cancel", str(job["id"]))
    assert cancel.returncode == 0 and "cancel requested" in cancel.stdout, cancel.stderr
    watched = ketter(api, "jobs", "watch", str(job["id"]))
    assert watched.returncode == 3, watched.stdout + watched.stderr
    assert f"job {job['id']} CANCELLED" in watched.stdout
    assert not (paths["remote"] / "Stems").exists()
    types = [e["event_type"] for e in as_json(ketter(api, "jobs", "events", str(job["id"]),
                                                     "--json"))]
    assert types[-1] == "cancelled" or "cancelled" in types
    again = ketter(api, "jobs", "cancel", str(job["id"]))
    assert again.returncode == 0 and "CANCELLED" in again.stdout


def _read_pty(fd: int, until: str, timeout: float) -> str:
    """Everything a terminal shows until ``until`` appears or the program exits."""
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the program exited and closed the terminal
            break
        if not chunk:
            break
        seen += chunk
        if until.encode() in seen:
            break
    return seen.decode(errors="replace")


def test_watch_shows_a_live_bar_on_a_terminal(ketter_stack: Stack, tmp_path: Path,
                                              sshd: SshServer) -> None:
    stack = ketter_stack
    api = stack.start_api()
    stack.start_worker(rsync_bwlimit_kib_s=1024)
    paths = _portals(api, tmp_path / "portals", sshd)
    _tree(paths["src"], "Stems", n_files=1, size=6 * 1024 * 1024)
    job = as_json(ketter(api, "jobs", "submit", "--from", "lab:Stems", "--to", "srvtrf:",
                         "--strategy", "direct", "--json"))
    primary, secondary = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KETTER_")}
    env.update(KETTER_API_URL=api.url, TERM="xterm-256color", COLUMNS="160", LINES="40")
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([KETTER, "jobs", "watch", str(job["id"])], stdin=secondary,
                            stdout=secondary, stderr=secondary, env=env, close_fds=True)
    os.close(secondary)
    try:
        screen = _read_pty(primary, "DONE:", timeout=60)
        assert proc.wait(timeout=15) == 0, screen
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(primary)
    # Redrawn in place (carriage returns / cursor moves), with the live numbers.
    assert "\r" in screen or "\x1b[" in screen, screen[-2000:]
    assert "send" in screen and "MB of" in screen and "ETA" in screen, screen[-2000:]
    assert "MB/s" in screen or "KB/s" in screen, screen[-2000:]
    assert "━" in screen  # the bar itself
    assert f"job {job['id']} DONE:" in screen
