"""What infra/Dockerfile installs, checked without a Docker engine.

The image runs ``pip install .`` on a context cut down by the root .dockerignore.
This builds the same wheel from the same files and runs the compose services' commands
(migrate, the DKU healthcheck) from it, outside the source tree, so a file missing from
the package (e.g. the Alembic migrations) fails here instead of in a container.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

from mvp_core.db.migrate import current_revision, head_revision

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"


def dockerignore_allows() -> set[str]:
    """Top-level names the ignore file lets into the build context."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {ln[1:].split("/")[0] for ln in lines if ln.startswith("!")}
    assert "**" in lines, "the ignore file must start from nothing"
    return allowed


def test_dockerfile_copies_only_what_the_context_holds() -> None:
    copies = re.findall(r"^COPY\s+(.+)$", (INFRA / "Dockerfile").read_text(), re.MULTILINE)
    sources = {src.split("/")[0] for line in copies for src in line.split()[:-1]}
    assert sources == {"pyproject.toml", "README.md", "mvp_core"}
    assert sources <= dockerignore_allows()
    # The classic builder (no BuildKit) reads only <context>/.dockerignore: a
    # Dockerfile-specific one would let the whole tree (.venv) into its context.
    assert not (INFRA / "Dockerfile.dockerignore").exists()


def test_installed_package_migrates_and_runs_the_dku(
    tmp_path: Path, fresh_database_url: Callable[..., str]
) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, context / name)
    shutil.copytree(
        ROOT / "mvp_core", context / "mvp_core", ignore=shutil.ignore_patterns("__pycache__")
    )
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            str(context),
            "-w",
            str(tmp_path / "dist"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("mvp_core-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(site)
    assert any(n.startswith("mvp_core/db/migrations/versions/") for n in names)

    url = fresh_database_url()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KETTER_")}
    env.update(PYTHONPATH=str(site), KETTER_DATABASE_URL=url)
    workdir = tmp_path / "elsewhere"  # not the repo: only the wheel can be imported
    workdir.mkdir()

    migrate = subprocess.run(
        [sys.executable, "-m", "mvp_core.db.migrate"],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    assert current_revision(url) == head_revision()

    dku = subprocess.run(
        [
            sys.executable,
            "-m",
            "mvp_core.dku",
            "--only",
            "python,rsync,postgres,migrations",
            "--no-report",
        ],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert dku.returncode == 0, dku.stdout + dku.stderr
    assert (
        str(site)
        in subprocess.run(
            [sys.executable, "-c", "import mvp_core; print(mvp_core.__file__)"],
            env=env,
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    )
