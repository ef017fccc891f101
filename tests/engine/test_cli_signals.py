"""Ctrl-C and SIGTERM on the engine CLI mid-transfer: exit 130 / 143, children stopped,
the staging directory kept with a word on where it is, and a rerun that resumes from
it and leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.sshd import SshServer
from tests.fixtures.stack import wait_until

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KETTER_")}
    env.update(KETTER_TEMP_DIR=str(tmp_path / "ltmp"),
               KETTER_REMOTE_TEMP_DIR=str(tmp_path / "rtmp"),
               **extra)
    return env


def _argv(src: Path, dst: Path) -> list[str]:
    return [sys.executable, "-m", "mvp_core.transfer_engine.cli", "--from", str(src),
            "--to", str(dst), "--strategy", "direct"]


def _processes_mentioning(needle: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if needle.encode() in cmdline:
            found.append(cmdline.decode(errors="replace"))
    return found


@pytest.mark.parametrize(("signum", "code", "name"), [(signal.SIGINT, 130, "Ctrl-C"),
                                                       (signal.SIGTERM, 143, "SIGTERM")])
def test_signal_mid_transfer_keeps_staging_and_a_rerun_resumes(
        tmp_path: Path, signum: int, code: int, name: str) -> None:
    src = tmp_path / "src" / "Mix A"
    src.mkdir(parents=True)
    for i in range(3):
        (src / f"Take_{i}.wav").write_bytes(os.urandom(3_000_000))
    dst = tmp_path / "dst"
    dst.mkdir()
    proc = subprocess.Popen(_argv(src, dst), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=_env(tmp_path, KETTER_RSYNC_BWLIMIT_KIB_S="2048"))
    try:
        staged = wait_until(
            lambda: [p for p in dst.glob(".ketter-*/Mix A/Take_*.wav") if p.is_file()],
            timeout=30, interval=0.05, what="a first file complete in staging")
        proc.send_signal(signum)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert f"ketter: stopped ({name})" in err
    root = staged[0].parents[1]
    assert f"staging directory kept: {root}" in err
    assert "rerun the same command to resume" in err and f"rm -rf {root}" in err
    assert root.is_dir() and not (dst / "Mix A").exists()
    assert _processes_mentioning(str(dst)) == []  # rsync stopped with us
    inode = staged[0].stat().st_ino

    rerun = subprocess.run(_argv(src, dst), cwd=ROOT, capture_output=True, text=True,
                           env=_env(tmp_path), timeout=60, check=False)
    assert rerun.returncode == 0, rerun.stderr
    delivered = dst / "Mix A" / staged[0].name
    assert delivered.stat().st_ino == inode  # resumed: the finished file was not sent again
    for f in src.iterdir():
        assert (dst / "Mix A" / f.name).read_bytes() == f.read_bytes()
    assert sorted(p.name for p in dst.iterdir()) == ["Mix A"]  # no staging left
    leftovers = [p for d in ("ltmp", "rtmp") for p in (tmp_path / d).rglob("*") if p.is_file()]
    assert leftovers == []


def test_ctrl_c_mid_transfer_to_an_ssh_target_resumes(tmp_path: Path, sshd: SshServer) -> None:
    src = tmp_path / "src" / "Mix B"
    src.mkdir(parents=True)
    for i in range(3):
        (src / f"Take_{i}.wav").write_bytes(os.urandom(3_000_000))
    remote = tmp_path / "remote"
    remote.mkdir()
    argv = [sys.executable, "-m", "mvp_core.transfer_engine.cli", "--from", str(src),
            "--to", sshd.spec(remote), "--strategy", "direct",
            "--identity", str(sshd.identity_file), "--known-hosts", str(sshd.known_hosts_file)]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(tmp_path, KETTER_RSYNC_BWLIMIT_KIB_S="2048"))
    try:
        staged = wait_until(
            lambda: [p for p in remote.glob(".ketter-*/Mix B/Take_*.wav") if p.is_file()],
            timeout=30, interval=0.05, what="a first file complete in staging")
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "ketter: stopped (Ctrl-C)" in err and "internal error" not in err, err
    root = staged[0].parents[1]
    assert f"staging directory may remain: {sshd.user}@{sshd.host}" in err
    assert str(root) in err and root.is_dir()
    wait_until(lambda: not _processes_mentioning(str(remote)), timeout=10,
               what="rsync on both sides to stop")
    inode = staged[0].stat().st_ino
    rerun = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=_env(tmp_path),
                           timeout=60, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert (remote / "Mix B" / staged[0].name).stat().st_ino == inode  # resumed
    assert sorted(p.name for p in remote.iterdir()) == ["Mix B"]
