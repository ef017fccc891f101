"""The CLI as an operator runs it: a subprocess, exit codes, one-line errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.sshd import SshServer
from tests.fixtures.trees import assert_trees_identical, make_session_tree

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KETTER_")}
    full_env.update(KETTER_TEMP_DIR=str(tmp_path / "ltmp"),
                    KETTER_REMOTE_TEMP_DIR=str(tmp_path / "rtmp"), **env)
    return subprocess.run([sys.executable, "-m", "mvp_core.transfer_engine.cli", *args],
                          capture_output=True, text=True, cwd=ROOT, env=full_env, timeout=120,
                          check=False)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ketter: error: ")
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_auto_picks_zip_first_from_env_thresholds(tmp_path: Path) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=10)
    proc = cli("--from", str(src), "--to", str(tmp_path / "out"), "--mode", "copy",
               tmp_path=tmp_path, KETTER_ZIP_THRESHOLD_FILES="5")
    assert proc.returncode == 0, proc.stderr
    assert "strategy: ZIP_FIRST" in proc.stdout
    assert "done: 16 files" in proc.stdout and "strategy ZIP_FIRST" in proc.stdout
    assert "phases: zip" in proc.stdout and "MB/s" in proc.stdout
    assert_trees_identical(src, tmp_path / "out" / src.name)
    assert not list((tmp_path / "ltmp").iterdir())


def test_move_over_ssh_with_identity_and_known_hosts(tmp_path: Path, sshd: SshServer) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=4)
    reference = make_session_tree(tmp_path / "ref", n_audio=4)
    proc = cli("--from", str(src), "--to", sshd.spec(tmp_path / "out"), "--mode", "move",
               "--strategy", "direct", "--identity", str(sshd.identity_file),
               "--known-hosts", str(sshd.known_hosts_file), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "strategy DIRECT" in proc.stdout
    assert "send" in proc.stderr  # progress / phase lines go to stderr
    assert not src.exists()
    assert_trees_identical(reference, tmp_path / "out" / src.name)


def test_dry_run_only_prints_the_plan(tmp_path: Path) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=2)
    proc = cli("--from", str(src), "--to", str(tmp_path / "out"), "--dry-run",
               tmp_path=tmp_path)
    assert proc.returncode == 0
    assert "strategy: DIRECT" in proc.stdout and "8 files" in proc.stdout
    assert not (tmp_path / "out").exists()


def test_missing_source_is_one_line_and_exit_1(tmp_path: Path) -> None:
    proc = cli("--from", str(tmp_path / "nope"), "--to", str(tmp_path / "out"),
               tmp_path=tmp_path)
    assert proc.returncode == 1
    assert_one_line_error(proc, "source does not exist", "nope")


def test_wrong_host_key_is_one_line_and_exit_1(tmp_path: Path, sshd: SshServer,
                                                wrong_known_hosts: Path) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=2)
    proc = cli("--from", str(src), "--to", sshd.spec(tmp_path / "out"),
               "--identity", str(sshd.identity_file), "--known-hosts", str(wrong_known_hosts),
               tmp_path=tmp_path)
    assert proc.returncode == 1
    assert_one_line_error(proc, "host key")


def test_connection_refused_is_transient_exit_75(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = make_session_tree(tmp_path / "src", n_audio=2)
    proc = cli("--from", str(src), "--to", f"127.0.0.1:{port}:/tmp/x", tmp_path=tmp_path)
    assert proc.returncode == 75
    assert_one_line_error(proc, "connection refused")


@pytest.mark.parametrize("spec", ["-oProxyCommand=touch pwned:/x", "host:relative/path"])
def test_bad_endpoint_is_one_line(tmp_path: Path, spec: str) -> None:
    proc = cli("--from", str(tmp_path), "--to", spec, tmp_path=tmp_path)
    assert proc.returncode == 1
    assert_one_line_error(proc)


def test_usage_error_exits_2(tmp_path: Path) -> None:
    proc = cli("--from", str(tmp_path), tmp_path=tmp_path)
    assert proc.returncode == 2 and "--to" in proc.stderr


def test_bad_settings_are_one_line(tmp_path: Path) -> None:
    proc = cli("--from", str(tmp_path), "--to", str(tmp_path / "o"), tmp_path=tmp_path,
               KETTER_ZIP_THRESHOLD_FILES="many")
    assert proc.returncode == 2
    assert_one_line_error(proc, "invalid settings")


def test_relative_dot_source_gets_its_real_name(tmp_path: Path) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=2)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KETTER_")}
    full_env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-m", "mvp_core.transfer_engine.cli", "--from", ".",
                           "--to", str(tmp_path / "out")], capture_output=True, text=True,
                          cwd=src, env=full_env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert_trees_identical(src, tmp_path / "out" / src.name)


def test_dry_run_looks_at_the_target_and_says_what_a_run_would_do(
        tmp_path: Path, sshd: SshServer) -> None:
    src = make_session_tree(tmp_path / "src", n_audio=2)
    keys = ("--identity", str(sshd.identity_file), "--known-hosts", str(sshd.known_hosts_file))
    fresh = cli("--from", str(src), "--to", sshd.spec(tmp_path / "remote" / "new"),
                "--dry-run", *keys, tmp_path=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    assert "reachable over ssh" in fresh.stdout and "does not exist yet" in fresh.stdout
    assert f"would deliver {sshd.user}@{sshd.host}" in fresh.stdout
    assert not (tmp_path / "remote").exists()  # looked, wrote nothing

    (tmp_path / "remote" / src.name).mkdir(parents=True)
    taken = cli("--from", str(src), "--to", sshd.spec(tmp_path / "remote"), "--dry-run",
                *keys, tmp_path=tmp_path)
    assert_one_line_error(taken, "already exists", "--on-existing")
    replace = cli("--from", str(src), "--to", sshd.spec(tmp_path / "remote"), "--dry-run",
                  "--on-existing", "replace", *keys, tmp_path=tmp_path)
    assert replace.returncode == 0 and "would swap it" in replace.stdout

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = cli("--from", str(src), "--to", f"{sshd.user}@127.0.0.1:{port}:/tmp/x",
               "--dry-run", *keys, tmp_path=tmp_path)
    assert down.returncode == 75, down.stderr  # transient: worth retrying later
    assert_one_line_error(down)

    local = cli("--from", str(src), "--to", str(tmp_path / "out"), "--dry-run",
                tmp_path=tmp_path)
    assert local.returncode == 0 and "would deliver" in local.stdout
