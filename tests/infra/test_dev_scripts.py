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
import yaml

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


def test_prepare_writes_private_settings_and_a_worker_key(tmp_path: Path) -> None:
    """`dev_up.sh --prepare` (the first half of dev_up) on a copy of infra/."""
    infra = tmp_path / "infra"
    shutil.copytree(INFRA, infra, ignore=shutil.ignore_patterns(".env", "ssh", "lab"))
    env = base_env()
    first = run(["bash", str(infra / "dev_up.sh"), "--prepare"], env)
    assert first.returncode == 0, first.stdout + first.stderr
    dotenv = infra / ".env"
    assert dotenv.stat().st_mode & 0o777 == 0o600
    tokens = [
        ln.split("=", 1)[1]
        for ln in dotenv.read_text().splitlines()
        if ln.startswith("KETTER_API_TOKEN=")
    ]
    assert len(tokens) == 1 and len(tokens[0]) >= 40
    token = tokens[0]
    assert token not in first.stdout + first.stderr
    key = infra / "ssh" / "id_ed25519"
    assert key.stat().st_mode & 0o777 == 0o600
    assert (infra / "ssh" / "id_ed25519.pub").read_text().startswith("ssh-ed25519 ")
    assert (infra / "ssh" / "known_hosts").is_file()

    again = run(["bash", str(infra / "dev_up.sh"), "--prepare"], env)  # keeps what exists
    assert again.returncode == 0
    assert f"KETTER_API_TOKEN={token}\n" in dotenv.read_text()

    # The prepared settings make a valid stack, with the token and the key mounted.
    config = run(["bash", str(infra / "compose.sh"), "config"], env)
    assert config.returncode == 0, config.stderr
    parsed = yaml.safe_load(config.stdout)
    assert parsed["services"]["api"]["environment"]["KETTER_API_TOKEN"] == token
    sources = {
        v["source"]
        for v in parsed["services"]["worker"]["volumes"]
        if isinstance(v, dict) and v.get("type") == "bind"
    }
    assert str(key) in sources


def test_dev_up_rejects_unknown_arguments() -> None:
    proc = run(["bash", str(INFRA / "dev_up.sh"), "--bogus"], base_env())
    assert proc.returncode == 2 and "usage" in proc.stderr


def _prepare_as_root(tmp_path: Path, **extra: str) -> tuple[Path, subprocess.CompletedProcess[str]]:
    infra = tmp_path / "infra"
    shutil.copytree(INFRA, infra, ignore=shutil.ignore_patterns(".env", "ssh", "lab"))
    env = {k: v for k, v in base_env().items() if k != "SUDO_UID"} | extra
    return infra, run(["bash", str(infra / "dev_up.sh"), "--prepare"], env)


def _env_value(infra: Path, name: str) -> str:
    values = [
        ln.split("=", 1)[1]
        for ln in (infra / ".env").read_text().splitlines()
        if ln.startswith(f"{name}=")
    ]
    return values[-1]


@pytest.mark.skipif(os.geteuid() != 0, reason="the root-only branch; CI runs as root")
def test_prepare_as_root_gives_the_key_to_no_existing_account(tmp_path: Path) -> None:
    """Root never hands the new private key to uid 1000 (on a real host, someone else)."""
    infra, proc = _prepare_as_root(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    uid = int(_env_value(infra, "KETTER_APP_UID"))
    assert uid >= 10000
    owner = (infra / "ssh" / "id_ed25519").stat().st_uid
    assert owner == uid
    taken = subprocess.run(["getent", "passwd", str(uid)], capture_output=True, check=False)
    assert taken.returncode != 0, f"uid {uid} belongs to {taken.stdout!r}"
    assert f"uid {uid}" in proc.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="the root-only branch; CI runs as root")
def test_prepare_under_sudo_gives_the_key_to_the_caller(tmp_path: Path) -> None:
    infra, proc = _prepare_as_root(tmp_path, SUDO_UID="4242")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _env_value(infra, "KETTER_APP_UID") == "4242"
    assert (infra / "ssh" / "id_ed25519").stat().st_uid == 4242


def test_debian_docker_cli_builds_with_buildkit_others_only_with_buildx() -> None:
    """dev_up.sh asks for BuildKit only where the CLI has it (a docker >= 23 without buildx
    fails a DOCKER_BUILDKIT=1 build); Debian 12's 20.10 CLI has it built in."""
    assert Path("/usr/bin/docker").exists(), "bootstrap.sh services installs docker.io"
    probe = 'source infra/compose.sh; ketter_buildkit'
    env = base_env() | {"PATH": f"/usr/bin:{os.environ['PATH']}"}
    assert run(["bash", "-c", probe], env).stdout.strip() == "1"
    for cli in {os.path.realpath(p) for p in _all_on_path("docker")} - {"/usr/bin/docker"}:
        has_buildx = run([cli, "buildx", "version"], base_env()).returncode == 0
        major = int(run([cli, "--version"], base_env()).stdout.split()[2].split(".")[0])
        shim = Path(cli).parent
        got = run(["bash", "-c", probe], env | {"PATH": f"{shim}:{os.environ['PATH']}"})
        assert got.stdout.strip() == ("1" if has_buildx or major < 23 else "0"), cli


def _all_on_path(name: str) -> list[str]:
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    return [str(Path(d) / name) for d in dirs if (Path(d) / name).is_file()]
