"""The API as a real uvicorn process on the real test Postgres and private Redis.

No worker runs here: these tests are about what the API accepts, refuses and says.
One API process serves the whole module; each test starts from emptied tables.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.fixtures.stack import ApiProcess, start_api_process
from tests.service.conftest import Portals, create_portals

TOKEN = "s3cret-token-for-tests-only"


def _env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    return {"KETTER_DATABASE_URL": database_url, "KETTER_REDIS_URL": redis_url,
            "KETTER_QUEUE_NAME": "ketter:test", **extra}


@pytest.fixture(scope="module")
def api(database_url: str, redis_server: Any,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    log = tmp_path_factory.mktemp("api") / "api.log"
    proc = start_api_process(_env(database_url, redis_server.url), log)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def client(api: ApiProcess, clean_database_url: str, redis_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=15) as c:
        yield c


@pytest.fixture
def portals(client: httpx.Client, tmp_path: Path, sshd: Any) -> Portals:
    p = create_portals(client, tmp_path, sshd)
    (p.local_src_base / "Session A" / "Audio Files").mkdir(parents=True)
    (p.local_src_base / "Session A" / "Audio Files" / "kick.wav").write_bytes(b"x" * 100)
    return p


def _worker_row(db_engine: Engine, site: str) -> None:
    """A worker's heartbeat row at ``site``, as a worker process writes it: the API routes
    site-less jobs to the queue of a site with a live worker."""
    with db_engine.begin() as conn:
        conn.execute(text("INSERT INTO workers (id, hostname, pid, site, polling) "
                          "VALUES (:id, 'h', 1, :site, true)"), {"id": f"w-{site}", "site": site})


def _post_ascii_json(client: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST JSON with \\u escapes, so even lone surrogates reach the server as sent."""
    return client.post(path, content=json.dumps(body),
                       headers={"Content-Type": "application/json"})


def _job(p: Portals, source: str = "Session A", target: str = "", **extra: Any) -> dict[str, Any]:
    return {"source_portal_id": p.local_src, "source_path": source,
            "target_portal_id": p.ssh_dst, "target_path": target, **extra}


# --------------------------------------------------------------------------- portals


def test_portals_crud_and_no_secrets(client: httpx.Client, portals: Portals, sshd: Any) -> None:
    listed = client.get("/portals").json()
    assert [p["name"] for p in listed] == ["lab", "local-dst", "srvtrf"]
    ssh = client.get(f"/portals/{portals.ssh_dst}").json()
    assert ssh["kind"] == "ssh" and ssh["host"] == sshd.host and ssh["port"] == sshd.port
    assert ssh["identity_file"] == str(sshd.identity_file)  # a reference, shown as such
    key_text = Path(sshd.identity_file).read_text()
    secret_line = key_text.strip().splitlines()[1]
    assert secret_line not in client.get("/portals").text
    assert secret_line not in client.get(f"/portals/{portals.ssh_dst}").text

    spare = client.post("/portals", json={"name": "spare", "kind": "local", "base_path": "/tmp"})
    assert spare.status_code == 201
    assert client.delete(f"/portals/{spare.json()['id']}").status_code == 204
    assert client.get(f"/portals/{spare.json()['id']}").status_code == 404
    assert client.post("/portals", json={"name": "lab", "kind": "local",
                                         "base_path": "/tmp"}).status_code == 409


@pytest.mark.parametrize("body, needle", [
    ({"name": "x", "kind": "ftp", "base_path": "/d"}, "kind"),
    ({"name": "x", "kind": "ssh", "base_path": "/d"}, "needs a host"),
    ({"name": "x", "kind": "ssh", "host": "-oProxyCommand=touch /tmp/p", "base_path": "/d"},
     "invalid ssh host"),
    ({"name": "x", "kind": "ssh", "host": "h", "username": "-lroot", "base_path": "/d"},
     "invalid ssh user"),
    ({"name": "x", "kind": "ssh", "host": "bad host;id", "base_path": "/d"}, "invalid ssh host"),
    ({"name": "x", "kind": "ssh", "host": "h", "port": 70000, "base_path": "/d"}, "port"),
    ({"name": "x", "kind": "local", "base_path": "relative/dir"}, "absolute"),
    ({"name": "x", "kind": "local", "base_path": "/srv/../etc"}, ".."),
    ({"name": "x", "kind": "local", "base_path": "/srv/\x00bad"}, "NUL"),
    ({"name": "x\x00", "kind": "local", "base_path": "/srv"}, "control"),
    ({"name": "x", "kind": "local", "host": "h", "base_path": "/srv"}, "local portal"),
    ({"name": "lone \ud800 surrogate", "kind": "local", "base_path": "/srv"}, "unicode"),
    ({"name": "x", "kind": "local", "base_path": "/srv/\udcff"}, "unicode"),
    ({"name": "x", "kind": "local", "base_path": "/srv", "password": "p"}, "extra"),
    ({"name": "x", "kind": "ssh", "host": "h", "base_path": "/d", "rsync_path": "rsync"},
     "invalid rsync_path"),
    ({"name": "x", "kind": "ssh", "host": "h", "base_path": "/d",
      "rsync_path": "/usr/bin/rsync; touch /tmp/p"}, "invalid rsync_path"),
    ({"name": "x", "kind": "local", "base_path": "/srv", "rsync_path": "/usr/bin/rsync"},
     "local portal"),
])
def test_portal_bad_input_is_422(client: httpx.Client, body: dict[str, Any], needle: str) -> None:
    response = _post_ascii_json(client, "/portals", body)
    assert response.status_code == 422, response.text
    assert needle.lower() in response.text.lower()
    assert client.get("/portals").json() == []


# --------------------------------------------------------------------------- jobs


def test_a_source_typed_in_nfc_names_the_nfd_folder_on_disk(
        client: httpx.Client, portals: Portals, redis_server: Any) -> None:
    import unicodedata

    on_disk = unicodedata.normalize("NFD", "Sessão Mac")
    (portals.local_src_base / on_disk).mkdir()
    typed = unicodedata.normalize("NFC", "Sessão Mac")
    response = client.post("/jobs", json=_job(portals, typed))
    assert response.status_code == 201, response.text
    assert response.json()["source_path"] == on_disk
    missing = client.post("/jobs", json=_job(portals, "Sessão Nenhuma"))
    assert missing.status_code == 422 and "does not exist" in missing.text


def test_submit_job_pending_with_events(client: httpx.Client, portals: Portals,
                                        redis_server: Any, db_engine: Engine) -> None:
    _worker_row(db_engine, "suite-a")
    response = client.post("/jobs", json=_job(portals, "./Session A/", "deliveries//today"))
    assert response.status_code == 201, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "PENDING" and job["attempts"] == 0
    assert job["source_path"] == "Session A" and job["target_path"] == "deliveries/today"
    assert job["requested_strategy"] == "auto" and job["strategy"] is None
    events = client.get(f"/jobs/{job['id']}/events").json()
    assert [e["event_type"] for e in events] == ["created", "queued"]
    with redis_server.client() as r:  # handed to arq under the job's own name
        assert r.exists(f"arq:job:ketter-job-{job['id']}") == 1
        # on the queue of the one site with a live worker (the job names no site)
        assert r.zscore("ketter:test:site:suite-a", f"ketter-job-{job['id']}") is not None
    # Enqueueing the same job again is a no-op: one arq job per Ketter job.
    assert client.get(f"/jobs/{job['id']}").json()["id"] == job["id"]


@pytest.mark.parametrize("change, needle", [
    ({"source_portal_id": 9999}, "unknown source portal"),
    ({"target_portal_id": 9999}, "unknown target portal"),
    ({"source_path": "/etc"}, "not absolute"),
    ({"source_path": "../outside"}, ".."),
    ({"source_path": "Session A/../../x"}, ".."),
    ({"target_path": "a/../../b"}, ".."),
    ({"target_path": "/abs"}, "not absolute"),
    ({"source_path": "Session\x00A"}, "NUL"),
    ({"source_path": "Session \ud800"}, "unicode"),
    ({"target_path": "\udcff"}, "unicode"),
    ({"source_path": "."}, "must name something"),
    ({"source_path": "No Such Session"}, "does not exist"),
    ({"mode": "teleport"}, "mode"),
    ({"strategy": "carrier-pigeon"}, "strategy"),
    ({"source_portal_id": 2**40}, "less than or equal"),
    ({"surprise": 1}, "extra"),
])
def test_job_bad_input_is_422(client: httpx.Client, portals: Portals, change: dict[str, Any],
                              needle: str) -> None:
    response = _post_ascii_json(client, "/jobs", {**_job(portals), **change})
    assert response.status_code == 422, response.text
    assert needle.lower() in response.text.lower()
    assert client.get("/jobs").json() == []


def test_job_overlapping_paths_are_422(client: httpx.Client, portals: Portals,
                                       tmp_path: Path) -> None:
    same = {"source_portal_id": portals.local_src, "target_portal_id": portals.local_src}
    cases = [
        ("Session A", "", "same place"),                 # output would be the source itself
        ("Session A", "Session A", "inside"),            # target is the source
        ("Session A", "Session A/Audio Files", "inside"),  # target inside the source
    ]
    for source, target, needle in cases:
        response = client.post("/jobs", json={**same, "source_path": source,
                                              "target_path": target})
        assert response.status_code == 422, (source, target, response.text)
        assert needle in response.text
    # Another portal on the same disk is the same place too.
    alias = client.post("/portals", json={"name": "alias", "kind": "local",
                                          "base_path": str(portals.local_src_base)}).json()
    response = client.post("/jobs", json={**same, "target_portal_id": alias["id"],
                                          "source_path": "Session A", "target_path": "Session A"})
    assert response.status_code == 422, response.text
    # A symlink inside the base that leads outside it is refused.
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, portals.local_src_base / "escape")
    response = client.post("/jobs", json=_job(portals, "escape"))
    assert response.status_code == 422 and "outside the portal base" in response.text


def test_not_found_and_out_of_range_ids(client: httpx.Client) -> None:
    assert client.get("/jobs/12345").status_code == 404
    assert client.get("/jobs/12345/events").status_code == 404
    assert client.post("/jobs/12345/cancel").status_code == 404
    assert client.get("/portals/12345").status_code == 404
    assert client.get(f"/jobs/{2**40}").status_code == 422
    assert client.get("/jobs/abc").status_code == 422
    assert client.get("/jobs", params={"status": "SLEEPING"}).status_code == 422
    assert client.get("/jobs", params={"limit": 0}).status_code == 422


def test_used_portal_cannot_be_deleted(client: httpx.Client, portals: Portals) -> None:
    assert client.post("/jobs", json=_job(portals)).status_code == 201
    response = client.delete(f"/portals/{portals.local_src}")
    assert response.status_code == 409 and "used by 1 unfinished job" in response.text
    assert client.get(f"/portals/{portals.local_src}").status_code == 200


def test_cancel_pending_job_ends_it_at_once(client: httpx.Client, portals: Portals) -> None:
    job = client.post("/jobs", json=_job(portals)).json()
    cancelled = client.post(f"/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200
    body = cancelled.json()
    assert body["status"] == "CANCELLED" and body["finished_at"] and body["started_at"] is None
    events = client.get(f"/jobs/{job['id']}/events").json()
    assert [e["event_type"] for e in events] == ["created", "queued", "cancelled"]
    # Cancelling again is harmless; the state does not change.
    assert client.post(f"/jobs/{job['id']}/cancel").json()["status"] == "CANCELLED"


def test_dku_smoke_portals_and_jobs_are_hidden_unless_asked(
    client: httpx.Client, portals: Portals, tmp_path: Path
) -> None:
    smoke = client.post("/portals", json={"name": "dku-smoke-src-0123456789", "kind": "local",
                                          "base_path": str(tmp_path)}).json()
    odd = client.post("/portals", json={"name": "dku_smoke-not-ours", "kind": "local",
                                        "base_path": str(tmp_path)}).json()
    ours = client.post("/jobs", json=_job(portals)).json()
    dku = client.post("/jobs", json=_job(portals) | {"target_portal_id": smoke["id"]}).json()
    listed = [p["id"] for p in client.get("/portals").json()]
    assert smoke["id"] not in listed and odd["id"] in listed  # only the exact prefix hides
    everything = [p["id"] for p in client.get("/portals", params={"include_dku": "true"}).json()]
    assert smoke["id"] in everything and len(everything) == len(listed) + 1
    assert [j["id"] for j in client.get("/jobs").json()] == [ours["id"]]
    assert [j["id"] for j in client.get("/jobs", params={"include_dku": "true"}).json()] == [
        dku["id"], ours["id"]]
    assert client.get(f"/jobs/{dku['id']}").status_code == 200  # still readable by id


def test_list_jobs_newest_first_filter_and_pages(client: httpx.Client, portals: Portals) -> None:
    ids = [client.post("/jobs", json=_job(portals, target=f"t{i}")).json()["id"]
           for i in range(4)]
    client.post(f"/jobs/{ids[1]}/cancel")
    assert [j["id"] for j in client.get("/jobs").json()] == ids[::-1]
    assert [j["id"] for j in client.get("/jobs", params={"status": "CANCELLED"}).json()] == [ids[1]]
    page = client.get("/jobs", params={"limit": 2, "offset": 1}).json()
    assert [j["id"] for j in page] == [ids[2], ids[1]]


def test_job_stored_even_when_redis_is_down(client: httpx.Client, portals: Portals,
                                            redis_server: Any, db_engine: Engine) -> None:
    _worker_row(db_engine, "suite-a")
    redis_server.stop()
    try:
        response = client.post("/jobs", json=_job(portals))
        assert response.status_code == 201, response.text
        events = client.get(f"/jobs/{response.json()['id']}/events").json()
        assert events[-1]["level"] == "warning" and "reconciler" in events[-1]["message"]
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json()["redis"]["ok"] is False and health.json()["database"]["ok"] is True
    finally:
        redis_server.start()


def test_health_without_worker_is_degraded(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded" and body["worker_ok"] is False
    assert body["database"]["ok"] and body["redis"]["ok"]


# --------------------------------------------------------------------------- token


def test_api_token_required_except_health(database_url: str, clean_database_url: str,
                                          redis_url: str, tmp_path: Path) -> None:
    proc = start_api_process(_env(database_url, redis_url, KETTER_API_TOKEN=TOKEN),
                             tmp_path / "api-token.log")
    try:
        with httpx.Client(base_url=proc.url, timeout=15) as c:
            for method, path in [("GET", "/portals"), ("GET", "/jobs"), ("GET", "/jobs/1"),
                                 ("POST", "/jobs"), ("POST", "/portals"),
                                 ("DELETE", "/portals/1"), ("GET", "/jobs/1/events"),
                                 ("POST", "/jobs/1/cancel")]:
                response = c.request(method, path, json={})
                assert response.status_code == 401, (method, path, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
                wrong = c.request(method, path, json={},
                                  headers={"Authorization": "Bearer " + TOKEN[:-1] + "X"})
                assert wrong.status_code == 401
                basic = c.request(method, path, json={},
                                  headers={"Authorization": f"Basic {TOKEN}"})
                assert basic.status_code == 401
            # A body over the cap is refused before the token is looked at, unread.
            huge = c.post("/portals", content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                          headers={"Content-Type": "application/json"})
            assert huge.status_code == 413 and len(huge.content) < 200, huge.text
            ok = c.get("/portals", headers={"Authorization": f"Bearer {TOKEN}"})
            assert ok.status_code == 200 and ok.json() == []
            assert c.get("/health").status_code == 200
            for response in (ok, c.get("/health"), c.get("/portals")):
                assert TOKEN not in response.text
        assert TOKEN not in proc.log_text()
    finally:
        proc.stop()


# --------------------------------------------------------------------------- manifest


def test_manifest_of_a_100000_file_job(client: httpx.Client, portals: Portals,
                                       clean_database_url: str) -> None:
    """The receipt holds every file of a big session; 409 until DONE, 404 for no job."""
    from sqlalchemy import create_engine, pool, update
    from sqlalchemy.orm import Session

    from mvp_core.db import repository as repo
    from mvp_core.db.models import Job, JobStatus

    job = client.post("/jobs", json=_job(portals)).json()
    assert job["verify"] == "checksum" and job["manifest_algorithm"] is None
    assert client.get(f"/jobs/{job['id']}/manifest").status_code == 409
    assert client.get("/jobs/999999/manifest").status_code == 404
    assert client.get(f"/jobs/{job['id']}/manifest", params={"format": "xml"}).status_code == 422
    n = 100_000
    lines = [repo.ManifestLine(f"Audio Files/Take {i // 1000:03d}/Kick_{i:06d}.wav", 1_048_576,
                               1_700_000_000_000_000_000 + i, f"{i:032x}") for i in range(n)]
    engine = create_engine(clean_database_url, poolclass=pool.NullPool)
    try:
        with Session(engine) as s:
            s.execute(update(Job).where(Job.id == job["id"]).values(status=JobStatus.DONE))
            repo.record_manifest(s, job_id=job["id"], algorithm="xxh128", files=lines)
            s.commit()
    finally:
        engine.dispose()
    body = client.get(f"/jobs/{job['id']}/manifest", timeout=60).json()
    assert body["algorithm"] == "xxh128" and len(body["files"]) == n
    assert body["files"][12345] == {"path": lines[12345].path, "size": 1_048_576,
                                    "hash": f"{12345:032x}"}
    csv_text = client.get(f"/jobs/{job['id']}/manifest", params={"format": "csv"},
                          timeout=60).text
    assert csv_text.count("\n") == n + 1
# --------------------------------------------------------------------------- issue 15


def test_request_bodies_are_capped_and_422s_do_not_echo_huge_input(
        client: httpx.Client) -> None:
    declared = client.post("/portals", content=b"x" * (1024 * 1024 + 1),
                           headers={"Content-Type": "application/json"})
    assert declared.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap counts what arrives
        for _ in range(3):
            yield b" " * (512 * 1024)

    chunked = client.post("/portals", content=chunks(),
                          headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413
    name = "n" * 900_000  # under the cap, far over the field's 100 characters
    refused = client.post("/portals", json={"name": name, "kind": "local", "base_path": "/x"})
    assert refused.status_code == 422
    assert len(refused.content) < 2000, len(refused.content)
    assert refused.json()["detail"][0]["loc"] == ["body", "name"]


def test_patch_portal_validates_the_whole_result(client: httpx.Client, portals: Portals,
                                                 tmp_path: Path) -> None:
    moved = tmp_path / "moved-dst"
    moved.mkdir()
    response = client.patch(f"/portals/{portals.local_dst}",
                            json={"base_path": str(moved), "name": "dst-2"})
    assert response.status_code == 200, response.text
    assert response.json()["base_path"] == str(moved) and response.json()["name"] == "dst-2"
    assert response.json()["warnings"] == []
    assert client.get(f"/portals/{portals.local_dst}").json()["name"] == "dst-2"
    # The merged portal must still be valid, and the 422 names the field.
    bad = client.patch(f"/portals/{portals.ssh_dst}", json={"host": "-oProxyCommand=x"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "host"]
    local_with_host = client.patch(f"/portals/{portals.local_dst}", json={"host": "nas"})
    assert local_with_host.status_code == 422
    assert client.patch(f"/portals/{portals.local_dst}", json={"name": "lab"}).status_code == 409
    assert client.patch(f"/portals/{portals.local_dst}", json={"colour": "red"}
                        ).status_code == 422
    assert client.patch("/portals/999999", json={"name": "x"}).status_code == 404
    # A Mac's Homebrew rsync: stored, shown, and a bad one is a 422 naming the field.
    brew = client.patch(f"/portals/{portals.ssh_dst}",
                        json={"rsync_path": "/opt/homebrew/bin/rsync"})
    assert brew.status_code == 200 and brew.json()["rsync_path"] == "/opt/homebrew/bin/rsync"
    bad_rsync = client.patch(f"/portals/{portals.ssh_dst}", json={"rsync_path": "$(id)"})
    assert bad_rsync.status_code == 422
    assert bad_rsync.json()["detail"][0]["loc"] == ["body", "rsync_path"]
    assert client.patch(f"/portals/{portals.ssh_dst}", json={"rsync_path": None}
                        ).json()["rsync_path"] is None
    # ssh -> local drops the ssh fields; a missing local base is a warning, not silence.
    to_local = client.patch(f"/portals/{portals.ssh_dst}",
                            json={"kind": "local", "base_path": str(tmp_path / "nowhere")})
    assert to_local.status_code == 200, to_local.text
    assert to_local.json()["host"] is None and to_local.json()["identity_file"] is None
    assert "not a directory" in to_local.json()["warnings"][0]


def test_portal_used_only_by_ended_jobs_is_removed_but_kept_in_history(
        client: httpx.Client, portals: Portals) -> None:
    job = client.post("/jobs", json=_job(portals)).json()
    busy = client.delete(f"/portals/{portals.ssh_dst}")
    assert busy.status_code == 409 and "unfinished" in busy.text
    assert client.post(f"/jobs/{job['id']}/cancel").json()["status"] == "CANCELLED"
    assert client.delete(f"/portals/{portals.ssh_dst}").status_code == 204
    assert portals.ssh_dst not in [p["id"] for p in client.get("/portals").json()]
    assert client.get(f"/portals/{portals.ssh_dst}").status_code == 404
    again = client.post("/jobs", json=_job(portals))
    assert again.status_code == 422 and "unknown target portal" in again.text
    # The ended job still says where it went, and the name can be used again.
    assert client.get(f"/jobs/{job['id']}").json()["target_portal_id"] == portals.ssh_dst
    reuse = client.post("/portals", json={"name": "srvtrf", "kind": "local",
                                          "base_path": str(portals.local_dst_base)})
    assert reuse.status_code == 201, reuse.text
    assert client.delete(f"/portals/{portals.ssh_dst}").status_code == 404
    # A portal no job ever named is simply deleted.
    assert client.delete(f"/portals/{reuse.json()['id']}").status_code == 204


def test_job_live_fields_are_null_unless_running_and_notify_url_is_checked(
        client: httpx.Client, portals: Portals) -> None:
    job = client.post("/jobs", json=_job(portals, notify_url="https://hooks.example/k?t=1"))
    assert job.status_code == 201, job.text
    body = job.json()
    for key in ("phase", "files_done", "speed_bytes_per_s", "eta_s"):
        assert key in body and body[key] is None, key
    assert "notify_url" not in body and "hooks.example" not in job.text
    for bad in ("ftp://x/y", "https://", "http://a b/", "x" * 3000):
        refused = client.post("/jobs", json=_job(portals, notify_url=bad))
        assert refused.status_code == 422, bad
        assert refused.json()["detail"][0]["loc"] == ["body", "notify_url"]


def test_domain_422s_point_at_the_field(client: httpx.Client, portals: Portals) -> None:
    cases = {
        "source_portal_id": _job(portals, source_portal_id=999),
        "source_path": _job(portals, source="Nope"),
        "target_path": _job(portals, target="a/../../b"),
    }
    for field, body in cases.items():
        refused = client.post("/jobs", json=body)
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"][0]["loc"] == ["body", field], refused.text
