"""Delivery test helpers: engine options with per-test temp dirs, targets here or over ssh."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from mvp_core.transfer_engine.endpoints import Endpoint, LocalEndpoint
from mvp_core.transfer_engine.options import EngineOptions
from tests.fixtures.sshd import SshServer
from tests.fixtures.stack import Stack
from tests.service.conftest import Portals, create_portals


@pytest.fixture
def options(tmp_path: Path) -> EngineOptions:
    return EngineOptions(temp_dir=tmp_path / "ltmp", remote_temp_dir=str(tmp_path / "rtmp"),
                         ssh_connect_timeout_s=5, rsync_io_timeout_s=30)


def target_for(where: str, path: Path, sshd: SshServer) -> Endpoint:
    return sshd.endpoint(path) if where == "ssh" else LocalEndpoint(path)


def entries(directory: Path) -> list[str]:
    """Names in a directory, hidden ones (staging) included."""
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def temp_leftovers(options: EngineOptions) -> list[Path]:
    found: list[Path] = []
    for d in (Path(options.temp_dir), Path(options.remote_temp_dir)):
        if d.exists():
            found += list(d.rglob("*"))
    return found


@pytest.fixture
def api_client(ketter_stack: Stack) -> httpx.Client:
    return ketter_stack.client(ketter_stack.start_api())


@pytest.fixture
def portals(api_client: httpx.Client, tmp_path: Path, sshd: SshServer) -> Portals:
    return create_portals(api_client, tmp_path / "portals", sshd)
