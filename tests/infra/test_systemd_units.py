"""infra/systemd/: the units a LAB host installs, checked offline by systemd itself.

``systemd-analyze verify`` loads each unit as systemd would (directives, dependencies,
that every Exec* command is executable) without a running systemd; the units point at
/opt/ketter, so they are checked as installed from this checkout (paths rewritten).
``systemd-sysusers --root`` creates the dedicated account in a scratch root.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

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
