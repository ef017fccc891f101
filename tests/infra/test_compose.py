"""docker-compose stack definition: validated by the real compose client (no engine needed).

``scripts/bootstrap.sh services`` installs Debian's docker-compose when no compose client
exists, so ``make test`` always has one; these tests fail (never skip) without it.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mvp_core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
# Variables .env.example documents that only the stack scripts read (not Settings).
STACK_ONLY = {
    "KETTER_API_PORT",
    "KETTER_API_BIND",
    "KETTER_API_HOST",
    "KETTER_SSH_KEY_FILE",
    "KETTER_SSH_KNOWN_HOSTS_FILE",
    "KETTER_APP_UID",
    "KETTER_BUILD_NETWORK",
    "KETTER_IMAGE_TAG",
    "KETTER_RUN_DIR",
    "KETTER_DKU_WORK_DIR",
    "POSTGRES_PASSWORD",
}


def compose_argv() -> list[str]:
    if (
        shutil.which("docker")
        and subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False
        ).returncode
        == 0
    ):
        return ["docker", "compose"]
    path = shutil.which("docker-compose")
    assert path, "no compose client: run `bash scripts/bootstrap.sh services` (make test does)"
    return [path]


def run_config(env_extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KETTER_")}
    env.update(KETTER_ENV_FILE=".env.example", **env_extra)
    return subprocess.run(
        [
            *compose_argv(),
            "-f",
            str(INFRA / "docker-compose.yml"),
            "--env-file",
            str(INFRA / ".env.example"),
            "config",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def token() -> str:
    return f"tok-{secrets.token_hex(8)}"


@pytest.fixture(scope="module")
def config(token: str) -> dict[str, Any]:
    proc = run_config({"KETTER_API_TOKEN": token})
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def test_services_and_order(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) == {"api", "worker", "postgres", "redis", "migrate"}
    for name in ("api", "worker"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["command"][-1] == "mvp_core.db.migrate"
    assert services["migrate"]["restart"] == "no"


def test_health_checks_persistence_and_mounts(config: dict[str, Any]) -> None:
    services = config["services"]
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert any(_target(v) == "/var/lib/postgresql/data" for v in _volumes(services["postgres"]))
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert "ping" in services["redis"]["healthcheck"]["test"]
    assert any("/health" in part for part in services["api"]["healthcheck"]["test"])
    ssh_mounts = {_target(v): v for v in _volumes(services["worker"]) if "/.ssh/" in _target(v)}
    assert set(ssh_mounts) == {"/home/ketter/.ssh/id_ed25519", "/home/ketter/.ssh/known_hosts"}
    assert all(m.get("read_only") is True for m in ssh_mounts.values())
    assert config["volumes"].keys() >= {"pgdata", "redisdata"}


def _volumes(service: dict[str, Any]) -> list[Any]:
    return list(service.get("volumes", []))


def _target(volume: Any) -> str:
    """A mount's path in the container, from the short (a:b:ro) or long syntax."""
    if isinstance(volume, dict):
        return str(volume.get("target", ""))
    parts = str(volume).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def test_token_and_settings_reach_api_and_worker(config: dict[str, Any], token: str) -> None:
    for name in ("api", "worker", "migrate"):
        env = config["services"][name]["environment"]
        assert env["KETTER_API_TOKEN"] == token
        assert env["KETTER_DATABASE_URL"].endswith("@postgres:5432/ketter")
        assert env["KETTER_REDIS_URL"] == "redis://redis:6379/0"
        # env_file settings arrive too (from .env.example here).
        assert env["KETTER_ZIP_THRESHOLD_FILES"] == "10000"


def test_config_refuses_a_stack_without_token() -> None:
    proc = run_config({})
    assert proc.returncode != 0
    assert "KETTER_API_TOKEN" in proc.stderr


def _example_keys() -> list[str]:
    text = (INFRA / ".env.example").read_text()
    # "# KETTER_X=example" documents a setting that is unset by default.
    return re.findall(r"^(?:# )?([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE)


def test_env_example_documents_every_setting() -> None:
    keys = _example_keys()
    assert len(keys) == len(set(keys)), "a variable is listed twice"
    settings_keys = {f"KETTER_{name.upper()}" for name in Settings.model_fields}
    missing = settings_keys - set(keys)
    assert not missing, f"infra/.env.example lacks {sorted(missing)}"
    unknown = set(keys) - settings_keys - STACK_ONLY
    assert not unknown, f"infra/.env.example lists unknown variables {sorted(unknown)}"


def test_env_example_defaults_match_settings() -> None:
    """A value shown in .env.example is the default: copying the file changes nothing."""
    text = (INFRA / ".env.example").read_text()
    values = dict(re.findall(r"^(KETTER_[A-Z0-9_]+)=(.*)$", text, flags=re.MULTILINE))
    defaults = Settings.model_construct()
    checked = 0
    for key, value in values.items():
        field = key[len("KETTER_") :].lower()
        if key in STACK_ONLY or value == "" or field not in Settings.model_fields:
            continue
        parsed = Settings.model_validate({field: value})
        assert getattr(parsed, field) == getattr(defaults, field), key
        checked += 1
    assert checked >= 15


def test_dockerfile_has_the_tools_and_drops_root() -> None:
    text = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim-bookworm$", text, flags=re.MULTILINE)
    install = re.search(r"apt-get install[^\n]*\n?[^\n]*", text)
    assert install and all(
        t in install.group(0) for t in ("rsync", "openssh-client", "zip", "unzip")
    )
    users = re.findall(r"^USER (\S+)$", text, flags=re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
