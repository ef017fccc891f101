"""infra/systemd/: the units a LAB host installs, checked offline by systemd itself.

``systemd-analyze verify`` loads each unit as systemd would (directives, dependencies,
that every Exec* command is executable) without a running systemd; the units point at
/opt/ketter, so they are checked as installed from this checkout (paths rewritten).
``systemd-sysusers --root`` creates the dedicated account in a scratch root.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.fixtures.redis import RedisServer
from tests.fixtures.stack import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "infra" / "systemd"
INSTALL_DIR = "/opt/ketter"


def analyze() -> str:
    found = shutil.which("systemd-analyze")
    assert found, "no systemd-analyze: scripts/bootstrap.sh services installs systemd"
    return found


def installed_copy(tmp_path: Path, replace: tuple[str, str] | None = None) -> Path:
    """The units as if the checkout were /opt/ketter (optionally with one more edit)."""
    out = tmp_path / "units"
    out.mkdir()
    for unit in UNITS.glob("*.service"):
        text = unit.read_text().replace(INSTALL_DIR, str(ROOT))
        if replace:
            text = text.replace(*replace)
        (out / unit.name).write_text(text)
    return out


def verify(units: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [analyze(), "verify", "ketter-api.service", "ketter-worker@.service"],
        cwd=units,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    proc = verify(installed_copy(tmp_path))
    assert proc.returncode == 0, proc.stderr
    # Warnings (unknown keys, bad values) do not change the exit code: none may name ours.
    ours = [ln for ln in proc.stderr.splitlines() if "ketter" in ln]
    assert ours == [], ours


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a worker whose python does not exist is refused."""
    broken = installed_copy(
        tmp_path, (f"{ROOT}/.venv/bin/python -m arq", "/nonexistent/python -m arq")
    )
    proc = verify(broken)
    assert proc.returncode != 0
    assert "/nonexistent/python is not executable" in proc.stderr


def unit(name: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if m := re.match(r"^([A-Za-z]+)=(.*)$", line):
            values.setdefault(m[1], []).append(m[2])
    return values


def test_units_run_what_make_up_runs_as_the_dedicated_user() -> None:
    api, worker = unit("ketter-api.service"), unit("ketter-worker@.service")
    native_up = (ROOT / "infra" / "native_up.sh").read_text()
    for values, module in (
        (api, "mvp_core.app.main:app"),
        (worker, "mvp_core.worker.run.WorkerSettings"),
    ):
        assert module in values["ExecStart"][0] and module in native_up
        assert values["User"] == ["ketter"] and values["Group"] == ["ketter"]
        assert values["EnvironmentFile"] == ["/etc/ketter/ketter.env"]  # no "-": missing = fails
        assert "KETTER_ENV_FILE=/etc/ketter/ketter.env" in values["Environment"]
        assert values["Restart"][0] in ("on-failure", "always")
        assert "StandardOutput" not in values  # journald, systemd's default
    assert "mvp_core.db.migrate" in api["ExecStartPre"][0]
    assert worker["KillMode"] == ["mixed"]  # TERM to the worker alone: it drains its job


def test_sysusers_creates_the_account(tmp_path: Path) -> None:
    sysusers = shutil.which("systemd-sysusers")
    assert sysusers, "systemd-sysusers comes with systemd (bootstrap.sh services)"
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    subprocess.run(
        [sysusers, f"--root={root}", str(UNITS / "ketter.sysusers.conf")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    (entry,) = [
        ln for ln in (root / "etc" / "passwd").read_text().splitlines() if ln.startswith("ketter:")
    ]
    _, _, uid, _, _, home, shell = entry.split(":")
    assert 0 < int(uid) < 1000 and home == "/var/lib/ketter" and shell == "/usr/sbin/nologin"


def unit_commands(name: str, env_file: Path) -> tuple[dict[str, str], list[list[str]]]:
    """What systemd would run for unit ``name`` installed from this checkout with
    ``env_file`` as its EnvironmentFile: the environment (Environment=, then the file over
    it) and the Exec* command lines, ``${VAR}`` expanded as systemd does."""
    values = unit(name)
    env: dict[str, str] = {}
    for line in values.get("Environment", []):
        env |= dict(pair.split("=", 1) for pair in shlex.split(line))
    env = {k: (str(env_file) if v == "/etc/ketter/ketter.env" else v) for k, v in env.items()}
    for line in env_file.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    commands = []
    for key in ("ExecStartPre", "ExecStart"):
        for line in values.get(key, []):
            line = line.replace(INSTALL_DIR, str(ROOT))
            line = re.sub(r"\$\{(\w+)\}", lambda m: env[m[1]], line)
            commands.append(shlex.split(line))
    return env, commands


def test_the_units_commands_run_a_stack_the_dku_passes(
    fresh_database_url: Callable[..., str],
    redis_url: str,  # flushed and running: the stack's Redis
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    """The API unit (migrations first) and two worker instances, run with their own
    command lines and a settings file as README's LAB install writes it; then the DKU
    the README runs. (No systemd here: the user switch and restarts are systemd's.)"""
    port = free_port()
    env_file = tmp_path / "ketter.env"
    env_file.write_text(
        "# /etc/ketter/ketter.env of a LAB host (test values)\n"
        f"KETTER_DATABASE_URL={fresh_database_url(create=False)}\n"
        f"KETTER_REDIS_URL={redis_server.url}\n"
        f"KETTER_API_TOKEN=lab-{secrets.token_hex(12)}\n"
        f"KETTER_API_HOST=127.0.0.1\nKETTER_API_PORT={port}\n"
        f"KETTER_API_URL=http://127.0.0.1:{port}\n"
        f"KETTER_TEMP_DIR={tmp_path / 'tmp'}\nKETTER_DKU_WORK_DIR={tmp_path / 'scratch'}\n"
        "KETTER_QUEUE_NAME=ketter:units-test\n"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("KETTER_")}
    api_env, api_cmds = unit_commands("ketter-api.service", env_file)
    worker_env, (worker_cmd,) = unit_commands("ketter-worker@.service", env_file)
    assert api_cmds[0][-1] == "mvp_core.db.migrate" and str(port) in api_cmds[1]
    migrate = subprocess.run(
        api_cmds[0],
        cwd=ROOT,
        env=base | api_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for argv, env in (
            (api_cmds[1], api_env),
            (worker_cmd, worker_env),
            (worker_cmd, worker_env),
        ):
            with (tmp_path / f"proc{len(procs)}.log").open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        argv,
                        cwd=ROOT,
                        env=base | env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        wait_until(lambda: _health(port), timeout=60, what="the API unit's /health")
        dku = subprocess.run(
            ["bash", "infra/native_dku.sh", "--report-dir", str(tmp_path / "reports")],
            cwd=ROOT,
            env=base | {"KETTER_ENV_FILE": str(env_file)},
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert dku.returncode == 0, dku.stdout + dku.stderr
        assert "0 warn, 0 fail" in dku.stdout.splitlines()[-2], dku.stdout
        assert "2 of 2 worker(s) alive" in dku.stdout  # two instances of the template
        oks = [ln.split()[1] for ln in dku.stdout.splitlines() if ln.startswith("OK ")]
        assert {"postgres", "migrations", "redis", "api", "worker"} <= set(oks)
        assert {"smoke_direct", "smoke_zip_first"} <= set(oks)  # jobs through the units
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def _health(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False
