"""A portal's rsync_path reaches the engine as the endpoint's remote rsync."""

from __future__ import annotations

from pathlib import Path

from mvp_core.db.models import Portal, PortalKind
from mvp_core.transfer_engine.endpoints import LocalEndpoint, SshEndpoint
from mvp_core.transfer_engine.options import EngineOptions
from mvp_core.transfer_engine.rsync import build_argv
from mvp_core.worker.job_mapping import endpoint_for


def test_the_portals_rsync_path_becomes_rsyncs_rsync_path() -> None:
    portal = Portal(name="mac", kind=PortalKind.SSH, host="mac.lan", port=22,
                    username="studio", base_path="/Users/studio/Sessions",
                    rsync_path="/opt/homebrew/bin/rsync")
    endpoint = endpoint_for(portal, "Sessão", what="target")
    assert isinstance(endpoint, SshEndpoint)
    assert endpoint.rsync_path == "/opt/homebrew/bin/rsync"
    argv = build_argv(LocalEndpoint(Path("/src/x")), endpoint, EngineOptions())
    assert "--rsync-path=/opt/homebrew/bin/rsync" in argv
    portal.rsync_path = None
    assert not any(a.startswith("--rsync-path") for a in build_argv(
        LocalEndpoint(Path("/src/x")), endpoint_for(portal, "x", what="target"), EngineOptions()))
