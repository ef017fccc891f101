"""DKU portal checks against real sshd servers and a real database."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy.orm import Session

from mvp_core.db.models import Portal, PortalKind
from mvp_core.dku.options import DkuOptions
from mvp_core.dku.portals import portal_checks
from mvp_core.dku.result import CheckResult, Status
from mvp_core.dku.smoke import PORTAL_PREFIX
from mvp_core.transfer_engine.options import EngineOptions
from tests.fixtures.maclike import MacHost
from tests.fixtures.sshd import SshServer


def _opts(database_url: str) -> DkuOptions:
    return DkuOptions(
        database_url=database_url,
        redis_url="redis://127.0.0.1:1/0",
        api_url="http://127.0.0.1:1",
        api_token=None,
        engine=EngineOptions(ssh_connect_timeout_s=5),
    )


def _ssh_portal(name: str, server: SshServer, base: Path, **overrides: object) -> Portal:
    values: dict[str, object] = {
        "name": name,
        "kind": PortalKind.SSH,
        "host": server.host,
        "port": server.port,
        "username": server.user,
        "base_path": str(base),
        "identity_file": str(server.identity_file),
        "known_hosts_file": str(server.known_hosts_file),
    }
    values.update(overrides)
    return Portal(**values)


def _by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


def test_healthy_ssh_portal_and_local_portal(
    db_session: Session, clean_database_url: str, sshd: SshServer, tmp_path: Path
) -> None:
    db_session.add_all(
        [
            _ssh_portal("srvtrf", sshd, tmp_path),
            Portal(name="lab", kind=PortalKind.LOCAL, base_path=str(tmp_path)),
            Portal(name=f"{PORTAL_PREFIX}src-x", kind=PortalKind.LOCAL, base_path="/gone"),
        ]
    )
    db_session.commit()
    results = _by_name(portal_checks(_opts(clean_database_url), skip_prefix=PORTAL_PREFIX))
    assert set(results) == {"portals", "portal_keys:srvtrf", "portal:srvtrf", "portal:lab"}
    assert results["portals"].data == {"count": 2, "ssh": 1}
    ssh = results["portal:srvtrf"]
    assert ssh.status is Status.OK, ssh.detail
    assert ssh.data["tools"]["rsync"] and ssh.data["tools"]["unzip"]
    assert ssh.data["free_bytes"] > 0
    assert ssh.data["temp_free_bytes"] > 0  # remote temp dir not created yet: its parent
    # The engine's capability probe, reported: GNU rsync 3.x, GNU find, a hash tool.
    caps = ssh.data["capabilities"]
    assert caps["rsync_flavour"] == "gnu" and caps["rsync_protocol"] >= 30
    assert caps["find"] == "gnu" and caps["hash_tools"]
    assert caps["rsync"] in ssh.detail and "hashing: " in ssh.detail
    assert results["portal_keys:srvtrf"].status is Status.OK
    assert results["portal:lab"].status is Status.OK


def test_remote_without_unzip_fails(
    db_session: Session, clean_database_url: str, sshd_without_unzip: SshServer, tmp_path: Path
) -> None:
    db_session.add(_ssh_portal("nounzip", sshd_without_unzip, tmp_path))
    db_session.commit()
    result = _by_name(portal_checks(_opts(clean_database_url), skip_prefix=PORTAL_PREFIX))
    check = result["portal:nounzip"]
    assert check.status is Status.FAIL
    assert "unzip not installed" in check.detail
    assert check.data["tools"]["rsync"]


def test_unknown_host_key_and_missing_base_path_fail(
    db_session: Session,
    clean_database_url: str,
    sshd: SshServer,
    tmp_path: Path,
    wrong_known_hosts: Path,
) -> None:
    db_session.add_all(
        [
            _ssh_portal("badkey", sshd, tmp_path, known_hosts_file=str(wrong_known_hosts)),
            _ssh_portal("nobase", sshd, tmp_path / "does not exist"),
            Portal(name="gone", kind=PortalKind.LOCAL, base_path=str(tmp_path / "unmounted")),
        ]
    )
    db_session.commit()
    results = _by_name(portal_checks(_opts(clean_database_url), skip_prefix=PORTAL_PREFIX))
    assert results["portal:badkey"].status is Status.FAIL
    assert "host key not trusted" in results["portal:badkey"].detail
    assert results["portal:nobase"].status is Status.FAIL
    assert "does not exist" in results["portal:nobase"].detail
    # A local portal's missing base path fails every job that uses it: a FAIL, not a WARN.
    assert results["portal:gone"].status is Status.FAIL
    gone = tmp_path / "unmounted"
    assert results["portal:gone"].detail == f"base path {gone} does not exist on this host"


def test_key_files_missing_or_readable_by_others(
    db_session: Session, clean_database_url: str, sshd: SshServer, tmp_path: Path
) -> None:
    loose = tmp_path / "loose_key"
    shutil.copy(sshd.identity_file, loose)
    loose.chmod(0o644)
    db_session.add_all(
        [
            _ssh_portal("loose", sshd, tmp_path, identity_file=str(loose)),
            _ssh_portal("nokey", sshd, tmp_path, identity_file=str(tmp_path / "absent")),
            _ssh_portal("noknown", sshd, tmp_path, known_hosts_file=str(tmp_path / "absent_kh")),
        ]
    )
    db_session.commit()
    results = _by_name(portal_checks(_opts(clean_database_url), skip_prefix=PORTAL_PREFIX))
    assert results["portal_keys:loose"].status is Status.WARN
    assert "readable by everyone" in results["portal_keys:loose"].detail
    assert results["portal_keys:nokey"].status is Status.FAIL
    assert "does not exist" in results["portal_keys:nokey"].detail
    assert results["portal_keys:noknown"].status is Status.FAIL
    # Key contents never reach a result.
    key_text = sshd.identity_file.read_text()
    assert all(key_text.strip().splitlines()[1] not in r.detail for r in results.values())


def test_unreachable_database_is_one_failed_check() -> None:
    results = portal_checks(
        _opts("postgresql+psycopg2://postgres@127.0.0.1:1/x"), skip_prefix=PORTAL_PREFIX
    )
    assert [(r.name, r.status) for r in results] == [("portals", Status.FAIL)]
    assert "cannot list portals" in results[0].detail


def test_a_mac_portal_reports_its_rsync_and_tools(
    db_session: Session, clean_database_url: str, mac_host: MacHost, tmp_path: Path
) -> None:
    db_session.add_all([_ssh_portal("mac", mac_host, tmp_path),
                        _ssh_portal("brew", mac_host, tmp_path,
                                    rsync_path="/opt/homebrew/bin/rsync")])
    db_session.commit()
    results = _by_name(portal_checks(_opts(clean_database_url), skip_prefix=PORTAL_PREFIX))
    mac = results["portal:mac"]
    assert mac.status is Status.OK, mac.detail
    expected = {"openrsync": "openrsync 2.6.9 (protocol 29)",
                "rsync269": "rsync 2.6.9 (protocol 29)"}[mac_host.variant]
    assert expected in mac.detail and "Darwin" in mac.detail and "BSD find" in mac.detail
    assert "shasum" in mac.detail and "md5" in mac.detail
    # A portal naming an rsync the host does not have cannot run a job: it fails.
    brew = results["portal:brew"]
    assert brew.status is Status.FAIL and "rsync not installed" in brew.detail


def test_a_mac_without_unzip_and_hash_tools_fails(
    db_session: Session, clean_database_url: str, mac_host_bare: MacHost, tmp_path: Path
) -> None:
    db_session.add(_ssh_portal("bare", mac_host_bare, tmp_path))
    db_session.commit()
    check = _by_name(portal_checks(_opts(clean_database_url), skip_prefix=PORTAL_PREFIX))[
        "portal:bare"]
    assert check.status is Status.FAIL and "unzip not installed" in check.detail
