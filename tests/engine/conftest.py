"""Engine test helpers: per-test temp dirs for both sides, quick job builders."""

from __future__ import annotations

from pathlib import Path

import pytest

from mvp_core.transfer_engine.options import EngineOptions


@pytest.fixture
def engine_options(tmp_path: Path) -> EngineOptions:
    """Separate local and "remote" temp dirs so cleanup on each side is visible."""
    return EngineOptions(temp_dir=tmp_path / "local_tmp", remote_temp_dir=str(tmp_path / "remote_tmp"),
                         ssh_connect_timeout_s=5, rsync_io_timeout_s=30)


def temp_leftovers(options: EngineOptions) -> list[str]:
    """Every file left in either temp dir (empty list = clean)."""
    found: list[str] = []
    for d in (Path(options.temp_dir), Path(options.remote_temp_dir)):
        if d.exists():
            found += [str(p) for p in d.rglob("*")]
    return found
