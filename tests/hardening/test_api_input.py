"""Hostile portal and job input is refused with 422 by the real API, before anything is
stored or queued: option injection into ssh (host/user/key paths starting with '-',
``-oProxyCommand=``, spaces, newlines) and path escape (``..``, absolute paths,
symlinks leaving the portal base, at submit time and at run time)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.fixtures.stack import Stack
from tests.fixtures.trees import make_session_tree
from tests.hardening.conftest import FINAL, submit
from tests.service.conftest import Portals

PROXY = "-oProxyCommand=sh -c 'touch /tmp/PWNED_{m}'"


def _post(client: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    """JSON with \\u escapes, so lone surrogates and control characters arrive as sent."""
    return client.post(path, content=json.dumps(body),
                       headers={"Content-Type": "application/json"})


def _ssh(sshd: Any, **change: Any) -> dict[str, Any]:
    body = {"name": f"p-{uuid.uuid4().hex[:8]}", "kind": "ssh", "host": sshd.host,
            "port": sshd.port, "username": sshd.user, "base_path": "/srv/delivery",
            "identity_file": str(sshd.identity_file),
            "known_hosts_file": str(sshd.known_hosts_file)}
    body.update(change)
    return body


def test_portal_option_injection_is_422(ketter_stack: Stack, api_client: httpx.Client,
                                        sshd: Any) -> None:
    marker = uuid.uuid4().hex
    proxy = PROXY.format(m=marker)
    bad: list[dict[str, Any]] = [
        {"host": proxy}, {"host": "-oProxyCommand=id"}, {"host": "-h"}, {"host": "-"},
        {"host": f"srvtrf {proxy}"}, {"host": "srvtrf\n-oProxyCommand=id"},
        {"host": "root@srvtrf"}, {"host": "srvtrf;id"}, {"host": "$(id)"}, {"host": "`id`"},
        {"host": "srvtrf\t-p2"}, {"host": ""},
        {"username": proxy}, {"username": "-lroot"}, {"username": "-oUser=root"},
        {"username": "root -p 2222"}, {"username": "ro\not"}, {"username": "a@b"},
        {"username": "$(id)"},
        {"identity_file": proxy}, {"identity_file": "-i/tmp/key"},
        {"identity_file": "relative/key"}, {"identity_file": "/keys/../etc/shadow"},
        {"known_hosts_file": "-oStrictHostKeyChecking=no"},
        {"known_hosts_file": "known_hosts"},
        {"base_path": "relative/dir"}, {"base_path": "-rf"}, {"base_path": "/srv/../etc"},
        {"base_path": "/srv/\x00x"},
        {"port": 0}, {"port": -22}, {"port": 65536}, {"port": "22 -oProxyCommand=id"},
    ]
    accepted = []
    for change in bad:
        response = _post(api_client, "/portals", _ssh(sshd, **change))
        if response.status_code != 422:
            accepted.append((change, response.status_code, response.text[:200]))
        else:
            assert response.json()["detail"], change
    assert accepted == [], accepted
    assert api_client.get("/portals").json() == []
    assert not Path(f"/tmp/PWNED_{marker}").exists()


def test_job_path_escape_is_422(ketter_stack: Stack, api_client: httpx.Client,
                                portals: Portals, tmp_path: Path) -> None:
    client = api_client
    make_session_tree(portals.local_src_base, "Mix", n_audio=2)
    outside = make_session_tree(tmp_path / "outside", "Secret", n_audio=1)
    src, dst = portals.local_src_base, portals.local_dst_base
    os.symlink(outside, src / "escape")                   # a symlink to a dir outside
    os.symlink(outside / "Secret.ptx", src / "file-escape")  # to a file outside
    os.symlink(tmp_path / "outside", src / "via")        # an escaping parent component
    os.symlink("../../outside", src / "relative-escape")  # relative link leaving the base
    os.symlink(tmp_path / "outside", dst / "out")        # target leaving its base
    os.symlink(src / "Mix", src / "inside-link")          # stays inside: allowed
    local = {"target_portal_id": portals.local_dst}
    bad: list[dict[str, Any]] = [
        {"source_path": "../outside"}, {"source_path": "Mix/../../outside"},
        {"source_path": "/etc"}, {"source_path": "//etc"}, {"source_path": ".."},
        {"source_path": "escape"}, {"source_path": "file-escape"},
        {"source_path": "via/Secret"}, {"source_path": "relative-escape"},
        {"source_path": ""}, {"source_path": "."},
        {"source_path": "Mix", "target_path": "..", **local},
        {"source_path": "Mix", "target_path": "../../tmp", **local},
        {"source_path": "Mix", "target_path": "/tmp", **local},
        {"source_path": "Mix", "target_path": "out", **local},
        {"source_path": "Mix", "target_path": "out/deeper", **local},
        {"source_path": "Mix", "target_path": "a/../../b"},   # ssh target: lexical check
        {"source_path": "Mix", "target_path": "/etc"},
    ]
    accepted = []
    for change in bad:
        body = {"source_portal_id": portals.local_src, "target_portal_id": portals.ssh_dst,
                "target_path": "", **change}
        response = _post(client, "/jobs", body)
        if response.status_code != 422:
            accepted.append((change, response.status_code, response.text[:200]))
    assert accepted == [], accepted
    assert client.get("/jobs").json() == []
    ok = client.post("/jobs", json={"source_portal_id": portals.local_src,
                                    "source_path": "inside-link",
                                    "target_portal_id": portals.local_dst, "target_path": ""})
    assert ok.status_code == 201, ok.text  # a symlink that stays inside the base is fine


def test_target_swapped_for_escaping_symlink_fails_at_run_time(
        ketter_stack: Stack, api_client: httpx.Client, portals: Portals, tmp_path: Path
) -> None:
    """The target folder becomes a symlink to elsewhere after the API checked it."""
    stack, client = ketter_stack, api_client
    make_session_tree(portals.local_src_base, "Mix", n_audio=2)
    (portals.local_dst_base / "deliver").mkdir()
    job = submit(client, portals, "Mix", target_portal_id=portals.local_dst,
                 target_path="deliver")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (portals.local_dst_base / "deliver").rmdir()
    os.symlink(elsewhere, portals.local_dst_base / "deliver")
    stack.start_worker()
    final = stack.wait_job(client, job["id"], FINAL, timeout=30)
    assert final["status"] == "FAILED", final
    assert "outside the portal base" in final["error_message"], final
    assert list(elsewhere.iterdir()) == [], "nothing may be written outside the base"
