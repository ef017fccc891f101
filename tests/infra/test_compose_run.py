"""The docker-compose stack, run for real: build, up, DKU, a job, restart, down.

An operator's flow with the project's own scripts on a copy of the working tree:
``dev_up.sh --prepare``, ``dev_up.sh`` (image build, healthy, migrations at head), the
DKU inside the worker (all ok), one copy job through the API to DONE with its content
compared, ``dev_down.sh`` and ``dev_up.sh`` again (volumes kept: the job is still there),
``dev_down.sh --volumes``. Both builders run: the first ``dev_up.sh`` with the docker CLI
first on PATH (on our machines a docker 28 without buildx: the classic builder), the
second with the other one (Debian's 20.10 CLI: BuildKit), so ``dev_up.sh`` is proven to
work with and without BuildKit. The base images are stand-ins (tests/fixtures/docker.py).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.docker import Timings, docker

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

# A loopback address other than the default: proves dev_up.sh prints infra/.env's bind.
BIND = "127.0.0.2"
# Ballast in the copy's .venv: sent as build context only if .dockerignore is not honoured.
BALLAST_MIB = 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind((BIND, 0))
        return int(s.getsockname()[1])


def project_copy(dest: Path) -> Path:
    """The working tree's tracked and new files (what a clone plus local edits holds)."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file() and rel != "infra/.env" and not rel.startswith("infra/ssh/"):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    ballast = dest / ".venv" / "ballast.bin"
    ballast.parent.mkdir()
    ballast.write_bytes(os.urandom(BALLAST_MIB * 1024 * 1024))
    return dest


class Stack:
    """The project copy's scripts, run the way an operator runs them."""

    def __init__(self, repo: Path, project: str) -> None:
        self.repo = repo
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("KETTER_", "DOCKER_BUILDKIT", "COMPOSE_"))
        }
        self.env["COMPOSE_PROJECT_NAME"] = project  # never the operator's own "infra" stack
        self.up = False

    def run(
        self, *argv: str, timeout: float = 900, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv),
            cwd=self.repo,
            env=self.env | (env or {}),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def script(self, name: str, *args: str, env: dict[str, str] | None = None) -> str:
        proc = self.run("bash", f"infra/{name}", *args, env=env)
        assert proc.returncode == 0, (
            f"{name} {args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
        return proc.stdout + proc.stderr

    def worker(self, shell: str) -> str:
        proc = self.run(
            "bash", "infra/compose.sh", "exec", "-T", "worker", "sh", "-c", shell, timeout=300
        )
        assert proc.returncode == 0, f"in the worker: {shell}\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def env_value(self, name: str) -> str:
        text = (self.repo / "infra" / ".env").read_text()
        return re.findall(rf"^{name}=(.*)$", text, flags=re.MULTILINE)[-1]

    def set_env(self, name: str, value: str) -> None:
        path = self.repo / "infra" / ".env"
        text = re.sub(rf"^{name}=.*$", f"{name}={value}", path.read_text(), flags=re.MULTILINE)
        path.write_text(text)


@pytest.fixture
def stack(tmp_path: Path, standin_images: dict[str, str]) -> Iterator[Stack]:
    project = f"ketter-test-{secrets.token_hex(3)}"
    s = Stack(project_copy(tmp_path / "ketter"), project)
    try:
        yield s
    finally:
        # Only a prepared copy (infra/.env written) can have started anything.
        down = (
            s.run("bash", "infra/dev_down.sh", "--volumes", timeout=300)
            if (s.repo / "infra" / ".env").exists()
            else None
        )
    if down is not None:
        left = docker(
            "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}"
        )
        assert down.returncode == 0, down.stdout + down.stderr
        assert left.stdout.strip() == "", f"volumes left behind: {left.stdout}"


def wait_status(client: httpx.Client, job_id: int, timeout_s: float = 120) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/jobs/{job_id}").raise_for_status().json()
        if job["status"] in ("DONE", "FAILED", "CANCELLED") or time.monotonic() > deadline:
            return dict(job)
        time.sleep(0.5)


TREE = r"""
mkdir -p "/data/src/Show 101/Mix v3/Audio Files" /data/dst
for i in 1 2 3 4 5; do
  head -c $((i * 300000)) /dev/urandom > "/data/src/Show 101/Mix v3/Audio Files/take $i.wav"
done
echo session > "/data/src/Show 101/Mix v3/Mix v3.ptx"
"""
SUMS = r"""cd "$1" && find . -type f -exec sha256sum {} + | sort -k2"""


def test_compose_stack_for_real(
    stack: Stack, standin_images: dict[str, str], docker_timings: Timings
) -> None:
    timings = docker_timings
    t = time.monotonic()
    out = stack.script("dev_up.sh", "--prepare")
    assert "generated KETTER_API_TOKEN" in out
    port = free_port()
    stack.set_env("KETTER_API_PORT", str(port))
    stack.set_env("KETTER_API_BIND", BIND)
    token = stack.env_value("KETTER_API_TOKEN")

    # 1. Build and start with the docker CLI as found on PATH.
    first = stack.script("dev_up.sh")
    stack.up = True
    timings.add("dev_up.sh: app image build + up + healthy", t)
    classic = "building with the classic builder" in first
    assert classic or "building with BuildKit" in first, first
    assert "stack healthy, migrations at head" in first
    assert f"API on http://{BIND}:{port} " in first  # infra/.env's bind, not the shell's
    assert token not in first
    if classic:
        # The classic builder reports its context: the root .dockerignore kept .venv out.
        sizes = re.findall(r"Sending build context to Docker daemon\s+([\d.]+)([kMG]?B)", first)
        assert sizes, first
        for number, unit in sizes:
            assert unit in ("B", "kB") or (unit == "MB" and float(number) < 5), sizes

    api = f"http://{BIND}:{port}"
    assert httpx.get(f"{api}/health", timeout=10).json()["status"] == "ok"

    # 2. The DKU inside the worker: every check ok, paths and URLs readable, password masked.
    t = time.monotonic()
    dku = stack.run(
        "bash",
        "infra/compose.sh",
        "exec",
        "-T",
        "worker",
        "python",
        "-m",
        "mvp_core.dku",
        timeout=300,
    )
    timings.add("DKU inside the worker", t)
    report = dku.stdout
    assert dku.returncode == 0, report + dku.stderr
    assert re.search(r"SUMMARY PASS: \d+ ok, 0 warn, 0 fail", report), report
    assert "postgresql+psycopg2://ketter:***@postgres:5432/ketter" in report
    assert "/tmp/ketter_tmp" in report and token not in report
    assert "/health 200: ok: database ok, redis ok, 1 of 1 worker(s) alive" in report

    # 3. One copy job through the API, content compared inside the worker.
    t = time.monotonic()
    stack.worker(TREE)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=api, headers=headers, timeout=10) as client:
        src = client.post(
            "/portals", json={"name": "src", "kind": "local", "base_path": "/data/src"}
        )
        dst = client.post(
            "/portals", json={"name": "dst", "kind": "local", "base_path": "/data/dst"}
        )
        job = (
            client.post(
                "/jobs",
                json={
                    "source_portal_id": src.raise_for_status().json()["id"],
                    "source_path": "Show 101/Mix v3",
                    "target_portal_id": dst.raise_for_status().json()["id"],
                    "target_path": "deliveries",
                    "mode": "copy",
                    "strategy": "auto",
                },
            )
            .raise_for_status()
            .json()
        )
        done = wait_status(client, job["id"])
    assert done["status"] == "DONE", done
    sums_src = stack.worker(f'set -- "/data/src/Show 101/Mix v3"; {SUMS}')
    sums_dst = stack.worker(f'set -- "/data/dst/deliveries/Mix v3"; {SUMS}')
    assert sums_src == sums_dst and sums_src.count("\n") == 6
    timings.add("one copy job to DONE, content compared", t)

    # 4. Down with volumes kept, up again with the other builder: the job is still there.
    t = time.monotonic()
    stack.script("dev_down.sh")
    if classic:
        # Debian's CLI first on PATH: BuildKit built in.
        again = stack.script("dev_up.sh", env={"PATH": f"/usr/bin:{stack.env['PATH']}"})
        assert "building with BuildKit" in again, again
    else:
        again = stack.script("dev_up.sh", env={"DOCKER_BUILDKIT": "0"})
        assert "building with the classic builder" in again, again
    assert "stack healthy, migrations at head" in again
    with httpx.Client(base_url=api, headers=headers, timeout=10) as client:
        kept = client.get(f"/jobs/{job['id']}").raise_for_status().json()
    assert kept["status"] == "DONE"
    assert stack.worker('ls -1 "/data/dst/deliveries/Mix v3"').splitlines() == [
        "Audio Files",
        "Mix v3.ptx",
    ]
    timings.add("dev_down.sh + dev_up.sh (other builder), job kept", t)
    print("\ncompose run timings:\n" + timings.table())
