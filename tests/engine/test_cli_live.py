"""The engine CLI's progress as an operator sees it: a live bar on a terminal (a pty
here), a few plain lines in a log, ZIP_FIRST's chunks counted rather than printed."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KETTER_")}
    env.update(KETTER_TEMP_DIR=str(tmp_path / "ltmp"),
               KETTER_REMOTE_TEMP_DIR=str(tmp_path / "rtmp"), **extra)
    return env


def _tree(root: Path, n: int, size: int) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        (root / f"Take_{i:03d}.wav").write_bytes(os.urandom(size))
    return root


def test_live_bar_on_a_terminal(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src" / "Mix A", 3, 2_000_000)
    primary, secondary = pty.openpty()
    env = _env(tmp_path, KETTER_RSYNC_BWLIMIT_KIB_S="2048", TERM="xterm-256color",
               COLUMNS="160")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mvp_core.transfer_engine.cli", "--from", str(src),
         "--to", str(tmp_path / "dst"), "--strategy", "direct"],
        cwd=ROOT, stdin=secondary, stdout=secondary, stderr=secondary, env=env)
    os.close(secondary)
    seen = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(primary, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=10) == 0, seen.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(primary)
    screen = seen.decode(errors="replace")
    assert "━" in screen and "ETA" in screen and "MB/s" in screen, screen[-3000:]
    assert "\r" in screen or "\x1b[" in screen  # redrawn in place
    assert f"delivered: {tmp_path / 'dst' / 'Mix A'}" in screen


def test_zip_first_counts_chunks_and_explains_overlap(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src" / "Stems", 24, 600_000)
    proc = subprocess.run(
        [sys.executable, "-m", "mvp_core.transfer_engine.cli", "--from", str(src),
         "--to", str(tmp_path / "dst"), "--strategy", "zip_first"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        env=_env(tmp_path, KETTER_ZIP_CHUNK_BYTES=str(2 * 1024 * 1024)))
    assert proc.returncode == 0, proc.stderr
    stderr = proc.stderr.splitlines()
    assert not any(line.strip().startswith(("zip done", "unzip done")) for line in stderr), stderr
    counted = [line for line in stderr if "chunks done per stage" in line]
    assert len(counted) == 1 and "zip " in counted[0], stderr
    assert len(stderr) < 15, stderr  # a handful of lines, not one per chunk and stage
    assert "overlap chunk by chunk" in proc.stdout
    assert f"delivered: {tmp_path / 'dst' / 'Stems'}" in proc.stdout
    assert "phases: zip" in proc.stdout  # the summary format scripts parse is unchanged
