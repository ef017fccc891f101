"""`make up && make dku && make down` on this machine, isolated from the shared stack.

The machine's own stack uses port 8000, database ``ketter`` and Redis 6379; this test
gives make its own port, a database that does not exist yet (``make up`` must create and
migrate it, as on a fresh machine), the private test Redis and its own run dir.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.fixtures.redis import RedisServer
from tests.fixtures.stack import REPO_ROOT, free_port, wait_until


def make(
    target: str, env: dict[str, str], *extra: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO_ROOT), target, *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def isolated_env(
    database_url: str, redis_server: RedisServer, port: int, run_dir: Path
) -> dict[str, str]:
    """This machine's environment minus KETTER_* and make's, plus a stack of our own."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("KETTER_") and k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    }
    env.update(
        {
            "KETTER_API_PORT": str(port),
            "KETTER_DATABASE_URL": database_url,
            "KETTER_REDIS_URL": redis_server.url,
            "KETTER_REDIS_PORT": str(redis_server.port),  # bootstrap checks this one, not 6379
            "KETTER_RUN_DIR": str(run_dir),
        }
    )
    return env


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (what a supervisor runs)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_make_up_dku_down(
    fresh_database_url: Callable[..., str],
    redis_url: str,  # flushed and running: the stack's Redis
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    port = free_port()
    run_dir = tmp_path / "run"
    report_dir = tmp_path / "reports"
    token = f"native-{secrets.token_hex(12)}"
    settings = isolated_env(fresh_database_url(create=False), redis_server, port, run_dir)
    settings.update(
        {
            "KETTER_API_TOKEN": token,
            "KETTER_DKU_WORK_DIR": str(tmp_path / "work"),
            "KETTER_TEMP_DIR": str(tmp_path / "ketter_tmp"),
            "KETTER_QUEUE_NAME": "ketter:native-test",
        }
    )
    # As a native install keeps them: one settings file that every `make` reads (up, dku
    # and down must agree on the port, the run dir and the token without re-exporting).
    env_file = tmp_path / "ketter.env"
    env_file.write_text(
        "# the test stack\n"
        + "".join(f"{k}={v}\n" for k, v in settings.items() if k.startswith("KETTER_"))
    )
    env = {k: v for k, v in settings.items() if not k.startswith("KETTER_")}
    env |= {"KETTER_ENV_FILE": str(env_file), "KETTER_REDIS_PORT": str(redis_server.port)}
    pids: list[int] = []
    # A log left over 10 MiB by an earlier stack is set aside at start-up (one kept).
    run_dir.mkdir()
    (run_dir / "api.log").write_bytes(b"old line\n" * (1200 * 1024))  # 10.5 MiB
    try:
        up = make("up", env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "created" in up.stdout  # the database did not exist before
        assert (run_dir / "api.log.1").stat().st_size > 10 * 1024 * 1024
        assert "old line" not in (run_dir / "api.log").read_text()
        pids = [int((run_dir / f"{n}.pid").read_text()) for n in ("api", "worker")]
        assert all(pid_alive(p) for p in pids)
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        # Protected endpoints need the token the stack was started with.
        assert httpx.get(f"http://127.0.0.1:{port}/jobs", timeout=5).status_code == 401

        again = make("up", env)  # idempotent: nothing started twice
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.count("already running") == 2
        assert [int((run_dir / f"{n}.pid").read_text()) for n in ("api", "worker")] == pids

        # A crashed worker is restarted by its supervisor (compose: restart: unless-stopped);
        # the DKU's smoke jobs below need the new one.
        (first_worker,) = children(pids[1])
        os.kill(first_worker, signal.SIGKILL)
        wait_until(
            lambda: children(pids[1]) not in ([], [first_worker]),
            timeout=30,
            what="the supervisor to start a new worker",
        )
        log = (run_dir / "worker.log").read_text()
        assert "supervise: worker exited with code 137; restarting in 1s" in log  # 128 + KILL

        dku = make("dku", env, f"DKU_ARGS=--report-dir {report_dir}")
        assert dku.returncode == 0, dku.stdout + dku.stderr
        report = json.loads(next(report_dir.glob("dku_*.json")).read_text())
        assert report["summary"]["passed"] is True
        assert report["api_url"] == f"http://127.0.0.1:{port}"
        assert {r["status"] for r in report["smoke"]} == {"DONE"}
        assert token not in dku.stdout + json.dumps(report)
    finally:
        down = make("down", env, timeout=90)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not any(pid_alive(p) for p in pids)
    assert not port_open(port)
    assert not list(run_dir.glob("*.pid"))
    again = make("down", env, timeout=30)  # idempotent
    assert again.returncode == 0 and "not running" in again.stdout


def test_make_up_refuses_a_port_someone_else_serves(
    fresh_database_url: Callable[..., str],
    redis_url: str,  # flushed and running: the stack's Redis
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    """Another server on our port would answer /health for us: `make up` must say so."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(8)
        port = other.getsockname()[1]
        env = isolated_env(fresh_database_url(create=False), redis_server, port, tmp_path / "run")
        try:
            up = make("up", env)
        finally:
            make("down", env, timeout=90)
    assert up.returncode != 0
    assert f"port {port} on 127.0.0.1 is already in use" in up.stderr
    assert not list((tmp_path / "run").glob("*.pid"))


def test_a_missing_settings_file_is_one_clear_error(tmp_path: Path) -> None:
    """`make up`/`dku`/`down` with KETTER_ENV_FILE naming nothing: one line, non-zero."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("KETTER_") and k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    }
    missing = tmp_path / "nope.env"
    for target, argv in (
        ("up", ["bash", "infra/native_up.sh"]),
        ("dku", ["bash", "infra/native_dku.sh"]),
        ("down", ["bash", "infra/native_down.sh"]),
    ):
        proc = subprocess.run(
            argv, cwd=REPO_ROOT, env=env | {"KETTER_ENV_FILE": str(missing)},
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert proc.returncode == 2, (target, proc.stdout, proc.stderr)
        assert proc.stderr == f"ketter: settings file KETTER_ENV_FILE={missing}: no such file\n"
        assert proc.stdout == ""
    unreadable = subprocess.run(
        ["bash", "infra/native_down.sh"],
        cwd=REPO_ROOT,
        env=env | {"KETTER_ENV_FILE": str(tmp_path)},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert unreadable.returncode == 2 and "not a readable file" in unreadable.stderr
