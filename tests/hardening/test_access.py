"""No one let in, nothing leaked: the API token on every route, secrets nowhere, and key
files that anyone can read refused at use and warned by the DKU."""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mvp_core.app.main import create_app
from mvp_core.config import Settings
from tests.dku.test_dku_stack import read_report, run_dku, statuses
from tests.fixtures.stack import Stack
from tests.fixtures.trees import assert_trees_identical, make_session_tree
from tests.hardening.conftest import FINAL, submit
from tests.service.conftest import create_portals

# FastAPI's generated documentation: the schema only, no data. Served without the token
# (see docs/reliability.md); every other route but /health must demand it.
DOC_ROUTES = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
OPEN_ROUTES = frozenset({"/health"})


def app_routes() -> Iterator[tuple[str, str]]:
    """(method, path) of every route the app serves, found by walking its routers, so a
    route added later is covered without touching this test."""
    def walk(routes: list[Any], prefix: str) -> Iterator[tuple[str, str]]:
        for route in routes:
            if hasattr(route, "original_router"):  # an included router (FastAPI >= 0.12x)
                yield from walk(route.original_router.routes,
                                prefix + route.include_context.prefix)
            elif hasattr(route, "methods"):
                for method in sorted(route.methods - {"HEAD"}):
                    yield method, prefix + route.path
            elif hasattr(route, "routes"):  # a mounted sub-application
                yield from walk(route.routes, prefix + getattr(route, "path", ""))
    yield from walk(list(create_app(Settings(api_token="x")).routes), "")


def test_route_enumeration_sees_the_whole_schema() -> None:
    """Guards the walker: every path of the OpenAPI schema is in the enumeration."""
    app = create_app(Settings(api_token="x"))
    enumerated = {path for _method, path in app_routes()}
    assert set(app.openapi()["paths"]) <= enumerated
    assert len(enumerated - OPEN_ROUTES - DOC_ROUTES) >= 5


def test_token_required_on_every_route_but_health(ketter_stack: Stack) -> None:
    token = f"tok-{secrets.token_urlsafe(24)}"
    api = ketter_stack.start_api(token=token)
    anon = ketter_stack.client(api)
    wrong_tokens = [token[:-1], token + "x", token.upper(), f"{token} {token}",
                    "null", "undefined"]
    let_in: list[tuple[str, str, str]] = []
    checked = 0
    for method, template in app_routes():
        path = template.replace("{portal_id}", "1").replace("{job_id}", "1")
        if template in OPEN_ROUTES or template in DOC_ROUTES:
            response = anon.request(method, path)
            assert response.status_code < 500, (method, path)
            assert token not in response.text
            continue
        checked += 1
        attempts: list[dict[str, str]] = [{}]
        attempts += [{"Authorization": f"Bearer {t}"} for t in wrong_tokens]
        attempts += [{"Authorization": "Bearer"}, {"Authorization": f"Basic {token}"},
                     {"Authorization": token},
                     {"X-Api-Token": token}, {"Cookie": f"token={token}"}]
        for headers in attempts:
            response = anon.request(method, path, headers=headers, json={})
            if response.status_code != 401:
                let_in.append((method, path, f"{headers} -> {response.status_code}"))
            assert token not in response.text
        # Bytes that are not even text must be a 401, not a 500.
        raw = anon.request(method, path, headers=[(b"Authorization", b"Bearer \xff\xfe")])
        if raw.status_code != 401:
            let_in.append((method, path, f"non-UTF-8 bearer -> {raw.status_code}"))
        good = anon.request(method, path, headers={"Authorization": f"Bearer {token}"},
                            json={})
        assert good.status_code != 401, (method, path)
    assert let_in == [], let_in
    assert checked >= 7
    assert anon.get("/health").status_code == 200
    assert token not in api.log_text()


def _secret_lines(key_file: Path) -> list[str]:
    """The body of a private key: any one of these lines in output is a leak."""
    lines = key_file.read_text().strip().splitlines()
    return [line for line in lines[1:-1] if len(line) >= 16]


def test_secrets_never_in_responses_events_logs_or_reports(
        ketter_stack: Stack, ketter_env: dict[str, str], sshd: Any, tmp_path: Path) -> None:
    stack = ketter_stack
    token = f"tok-{secrets.token_urlsafe(24)}"
    api = stack.start_api(token=token)
    stack.start_worker(api_token=token)
    client = stack.client(api, token=token)
    portals = create_portals(client, tmp_path / "portals", sshd)
    source = make_session_tree(portals.local_src_base, "Secret Mix", n_audio=4)
    seen: list[str] = []
    jobs = [submit(client, portals, "Secret Mix", strategy=s, target_path=s)
            for s in ("direct", "zip_first")]
    for job in jobs:
        final = stack.wait_job(client, job["id"], FINAL, timeout=60)
        assert final["status"] == "DONE", final
        assert_trees_identical(source, portals.ssh_dst_base / job["target_path"] / "Secret Mix")
    # A failing job too: errors carry argv and stderr, the likeliest place for a leak.
    broken = client.post("/portals", json={
        "name": "broken", "kind": "ssh", "host": sshd.host, "port": sshd.port,
        "username": "nobody-here", "base_path": str(tmp_path / "x"),
        "identity_file": str(sshd.identity_file),
        "known_hosts_file": str(sshd.known_hosts_file)}).json()
    failed = submit(client, portals, "Secret Mix", target_portal_id=broken["id"])
    assert stack.wait_job(client, failed["id"], FINAL, timeout=60)["status"] == "FAILED"

    for path in ["/portals", "/jobs", "/health", "/openapi.json",
                 *(f"/portals/{p['id']}" for p in client.get("/portals").json()),
                 *(f"/jobs/{j['id']}" for j in [*jobs, failed]),
                 *(f"/jobs/{j['id']}/events" for j in [*jobs, failed])]:
        response = client.get(path)
        assert response.status_code == 200, path
        seen.append(response.text)
    events = "".join(seen)
    assert '"event_type":"error"' in events.replace(" ", "")  # the failure is in there

    report_dir = tmp_path / "reports"
    dku_env = {**ketter_env, "KETTER_API_URL": api.url, "KETTER_API_TOKEN": token}
    dku = run_dku(dku_env, "--report-dir", str(report_dir), "--skip-smoke")
    text, report = read_report(report_dir)
    seen += [text, json.dumps(report), dku.stdout, dku.stderr]
    seen += [p.log_text() for p in stack.processes]

    secrets_ = [token, *_secret_lines(sshd.identity_file)]
    leaks = [(s[:8] + "...", i) for i, blob in enumerate(seen) for s in secrets_ if s in blob]
    assert leaks == [], leaks
    assert len(seen) >= 15 and all(isinstance(b, str) for b in seen)


@pytest.fixture
def loose_key(sshd: Any, tmp_path: Path) -> Path:
    """A copy of the working client key, readable by everyone (0644)."""
    path = tmp_path / "keys" / "loose_id"
    path.parent.mkdir()
    shutil.copy(sshd.identity_file, path)
    path.chmod(0o644)
    return path


def test_world_readable_key_refused_at_use_and_warned_by_dku(
        ketter_stack: Stack, ketter_env: dict[str, str], sshd: Any, tmp_path: Path,
        loose_key: Path) -> None:
    stack = ketter_stack
    api = stack.start_api()
    client = stack.client(api)
    portals = create_portals(client, tmp_path / "portals", sshd)
    loose = client.post("/portals", json={
        "name": "loose", "kind": "ssh", "host": sshd.host, "port": sshd.port,
        "username": sshd.user, "base_path": str(portals.ssh_dst_base),
        "identity_file": str(loose_key), "known_hosts_file": str(sshd.known_hosts_file)})
    assert loose.status_code == 201, loose.text
    make_session_tree(portals.local_src_base, "Key Mix", n_audio=2)
    stack.start_worker()
    job = submit(client, portals, "Key Mix", target_portal_id=loose.json()["id"])
    final = stack.wait_job(client, job["id"], FINAL, timeout=60)
    assert final["status"] == "FAILED", final
    assert final["attempts"] == 1, "a bad key is not worth retrying"
    message = final["error_message"].lower()
    assert str(loose_key) in final["error_message"], final
    assert "readable" in message or "permissions" in message, final
    assert not (portals.ssh_dst_base / "Key Mix").exists()

    report_dir = tmp_path / "reports"
    dku = run_dku({**ketter_env, "KETTER_API_URL": api.url}, "--report-dir", str(report_dir),
                  "--skip-smoke", "--only", "portals")
    _text, report = read_report(report_dir)
    assert statuses(report)["portal_keys:loose"] == "warn", (report, dku.stdout)
    detail = next(c["detail"] for c in report["checks"] if c["name"] == "portal_keys:loose")
    assert "readable by everyone" in detail
