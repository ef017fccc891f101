"""dev_up.sh / dev_down.sh / compose.sh without a Docker engine: clear errors, no side effects.

DOCKER_HOST points at a socket that cannot exist, so these tests never reach a real
engine even on a machine that has one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
NO_ENGINE = "unix:///nonexistent/ketter-test/docker.sock"


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KETTER_")}
    env["DOCKER_HOST"] = NO_ENGINE
    return env


@pytest.mark.parametrize("script", ["dev_up.sh", "dev_down.sh"])
def test_no_engine_is_a_clear_error_and_changes_nothing(script: str) -> None:
    before = sorted(p.name for p in INFRA.iterdir())
    proc = run(["bash", str(INFRA / script)], base_env())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no Docker engine reachable" in proc.stderr or "no docker CLI" in proc.stderr
    assert "make up" in proc.stderr  # says what to do instead
    assert sorted(p.name for p in INFRA.iterdir()) == before  # no .env, no ssh/ made


def test_no_compose_client_is_a_clear_error(tmp_path: Path) -> None:
    # A PATH with the basics but neither docker nor docker-compose.
    for tool in ("bash", "sed", "dirname", "tail", "cat"):
        found = shutil.which(tool)
        assert found
        (tmp_path / tool).symlink_to(found)
    env = base_env() | {"PATH": str(tmp_path)}
    proc = run(["bash", str(INFRA / "dev_up.sh")], env)
    assert proc.returncode == 2
    assert "no compose client" in proc.stderr


def test_make_compose_config_validates_without_engine() -> None:
    env = base_env()
    env.pop("MAKEFLAGS", None)
    proc = run(["make", "--no-print-directory", "compose-config"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Without a token the same target refuses the stack (compose's mandatory variable).
    example = {"KETTER_COMPOSE_ENV": str(INFRA / ".env.example"), "KETTER_ENV_FILE": ".env.example"}
    refused = run(["bash", str(INFRA / "compose.sh"), "config", "-q"], env | example)
    assert refused.returncode != 0 and "KETTER_API_TOKEN" in refused.stderr
