"""Service-test helpers: portals on disk and over the test sshd, created through the API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest


@dataclass
class Portals:
    """A local source portal, a local target portal and an ssh target portal."""

    local_src: int
    local_src_base: Path
    local_dst: int
    local_dst_base: Path
    ssh_dst: int
    ssh_dst_base: Path


def create_portals(client: httpx.Client, root: Path, sshd: Any, prefix: str = "") -> Portals:
    src, dst, remote = root / "src", root / "dst", root / "remote"
    for d in (src, dst, remote):
        d.mkdir(parents=True, exist_ok=True)

    def post(body: dict[str, Any]) -> int:
        response = client.post("/portals", json=body)
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    return Portals(
        local_src=post({"name": f"{prefix}lab", "kind": "local", "base_path": str(src)}),
        local_src_base=src,
        local_dst=post({"name": f"{prefix}local-dst", "kind": "local", "base_path": str(dst)}),
        local_dst_base=dst,
        ssh_dst=post({
            "name": f"{prefix}srvtrf", "kind": "ssh", "host": sshd.host, "port": sshd.port,
            "username": sshd.user, "base_path": str(remote),
            "identity_file": str(sshd.identity_file),
            "known_hosts_file": str(sshd.known_hosts_file),
        }),
        ssh_dst_base=remote,
    )


@pytest.fixture
def job_body() -> Any:
    def make(portals: Portals, source: str, target: str = "", **extra: Any) -> dict[str, Any]:
        return {"source_portal_id": portals.local_src, "source_path": source,
                "target_portal_id": portals.ssh_dst, "target_path": target, **extra}
    return make
