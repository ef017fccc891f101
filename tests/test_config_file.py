"""The settings file of a native install (KETTER_ENV_FILE), read by Python and the shell
scripts alike: same values, the environment wins, a bad file is one clear error."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mvp_core.config import DEFAULT_ENV_FILE, ConfigFileError, env_file, load_settings

ROOT = Path(__file__).resolve().parents[1]

SAMPLE = """\
# Ketter on lab-01
KETTER_API_URL=http://lab-01:8123
export KETTER_REDIS_URL="redis://127.0.0.1:6390/2"
KETTER_QUEUE_NAME='ketter:lab # one'
KETTER_TEMP_DIR=/srv/ketter tmp   # scratch on the big disk
KETTER_MAX_ATTEMPTS=5
KETTER_API_PORT=8123
"""


def clean_env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KETTER_")} | extra


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """This process's environment without KETTER_* (settings read os.environ)."""
    for name in [k for k in os.environ if k.startswith("KETTER_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_the_file_is_read(tmp_path: Path, environ: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ketter.env"
    path.write_text(SAMPLE)
    environ.setenv("KETTER_ENV_FILE", str(path))
    settings = load_settings()
    assert settings.api_url == "http://lab-01:8123"
    assert settings.redis_url == "redis://127.0.0.1:6390/2"
    assert settings.queue_name == "ketter:lab # one"
    assert settings.temp_dir == Path("/srv/ketter tmp")
    assert settings.max_attempts == 5


def test_environment_overrides_the_file(tmp_path: Path, environ: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ketter.env"
    path.write_text(SAMPLE)
    environ.setenv("KETTER_MAX_ATTEMPTS", "7")
    environ.setenv("KETTER_ENV_FILE", str(path))
    settings = load_settings()
    assert settings.max_attempts == 7 and settings.api_url == "http://lab-01:8123"


def test_shell_scripts_read_the_same_values(tmp_path: Path, environ: pytest.MonkeyPatch) -> None:
    """infra/ketter_env.sh (make up/dku/down) parses the file as pydantic-settings does."""
    path = tmp_path / "ketter.env"
    path.write_text(SAMPLE)
    names = [
        "KETTER_API_URL",
        "KETTER_REDIS_URL",
        "KETTER_QUEUE_NAME",
        "KETTER_TEMP_DIR",
        "KETTER_MAX_ATTEMPTS",
        "KETTER_API_PORT",
    ]
    script = "source infra/ketter_env.sh; ketter_load_env; " + "; ".join(
        f'printf "%s\\n" "${n}"' for n in names
    )
    env = clean_env(KETTER_ENV_FILE=str(path), KETTER_MAX_ATTEMPTS="7")
    out = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    environ.setenv("KETTER_ENV_FILE", str(path))
    environ.setenv("KETTER_MAX_ATTEMPTS", "7")
    settings = load_settings()
    assert out == [
        settings.api_url,
        settings.redis_url,
        settings.queue_name,
        str(settings.temp_dir),
        "7",
        "8123",
    ]


def test_no_file_named_and_no_default_means_environment_only(
    environ: pytest.MonkeyPatch,
) -> None:
    if DEFAULT_ENV_FILE.exists():
        pytest.fail(f"{DEFAULT_ENV_FILE} exists on this test machine; tests must not read it")
    assert env_file(clean_env()) is None
    environ.setenv("KETTER_QUEUE_NAME", "q")
    assert load_settings().queue_name == "q"


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_a_named_file_that_cannot_be_read_is_one_clear_error(
    tmp_path: Path, kind: str, environ: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "nope.env" if kind == "missing" else tmp_path
    environ.setenv("KETTER_ENV_FILE", str(path))
    with pytest.raises(ConfigFileError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"settings file KETTER_ENV_FILE={path}: ")
    assert "\n" not in message


def test_the_cli_and_the_dku_say_so_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.env"
    env = clean_env(KETTER_ENV_FILE=str(missing))
    python = str(ROOT / ".venv" / "bin" / "python")
    cli = subprocess.run(
        [
            python,
            "-m",
            "mvp_core.transfer_engine.cli",
            "--from",
            str(tmp_path),
            "--to",
            str(tmp_path / "t"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert cli.returncode != 0
    assert cli.stderr.strip().count("\n") == 0 and str(missing) in cli.stderr
    dku = subprocess.run(
        [python, "-m", "mvp_core.dku", "--no-report"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert dku.returncode == 1
    assert f"KETTER_ENV_FILE={missing}: No such file or directory" in dku.stdout
