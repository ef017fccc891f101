"""The ``ketter`` command reads the deployment's one settings file (issue 16) like every
other Ketter process: an operator on a LAB host types no exports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.fixtures.redis import free_port

KETTER = Path(sys.executable).parent / "ketter"


def test_ketter_finds_the_api_through_the_settings_file(tmp_path: Path) -> None:
    port = free_port()  # nobody listens: the error names the address the file gave
    settings = tmp_path / "ketter.env"
    settings.write_text(f"KETTER_API_URL=http://127.0.0.1:{port}\nKETTER_API_TOKEN=t0ken\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KETTER_")}
    env["KETTER_ENV_FILE"] = str(settings)
    run = subprocess.run([str(KETTER), "jobs", "list"], env=env, capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode != 0
    assert f"127.0.0.1:{port}" in run.stderr and run.stderr.count("\n") == 1, run.stderr
    assert "t0ken" not in run.stderr + run.stdout
    env["KETTER_ENV_FILE"] = str(tmp_path / "missing.env")
    missing = subprocess.run([str(KETTER), "jobs", "list"], env=env, capture_output=True,
                             text=True, timeout=60, check=False)
    assert missing.returncode != 0 and "missing.env" in missing.stderr, missing.stderr
    assert missing.stderr.count("\n") == 1
