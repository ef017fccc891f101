"""Job-end webhooks against a real HTTP receiver started by the test, with a real worker.

Exactly one signed POST per ended job (DONE, FAILED, and CANCELLED by the API while
PENDING), whoever ended it; a receiver that fails twice gets the third attempt; every
attempt is a ``notify`` event.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mvp_core.worker.notify import encode, sign, slack_body
from tests.fixtures.stack import Stack, wait_until
from tests.fixtures.trees import make_session_tree
from tests.service.conftest import Portals, create_portals

SECRET = "webhook-secret-for-tests"
FINAL = frozenset({"DONE", "FAILED", "CANCELLED"})


@dataclass
class Receiver:
    """Records every POST; answers 500 to the first ``fail_first[path]`` ones per path."""

    url: str
    posts: list[dict[str, Any]] = field(default_factory=list)
    fail_first: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [p for p in self.posts if p["path"] == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            rec = state["r"]
            with rec.lock:
                rec.posts.append({"path": self.path, "body": body,
                                  "headers": {k.lower(): v for k, v in self.headers.items()}})
                seen = sum(1 for p in rec.posts if p["path"] == self.path)
                fail = seen <= rec.fail_first.get(self.path, 0)
            self.send_response(500 if fail else 204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["r"] = Receiver(url=f"http://127.0.0.1:{server.server_port}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["r"]
    finally:
        server.shutdown()
        server.server_close()


def _verified(post: dict[str, Any]) -> dict[str, Any]:
    expected = "sha256=" + hmac.new(SECRET.encode(), post["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(post["headers"]["x-ketter-signature"], expected)
    assert post["headers"]["content-type"] == "application/json"
    return dict(json.loads(post["body"]))


def test_one_signed_post_per_ended_job_and_retries_survive_two_failures(
        ketter_stack: Stack, receiver: Receiver, tmp_path: Path, sshd: Any) -> None:
    stack = ketter_stack
    api = stack.start_api()
    client = stack.client(api)
    portals: Portals = create_portals(client, tmp_path / "p", sshd)
    make_session_tree(portals.local_src_base, "Mix A", n_audio=3)
    doomed = make_session_tree(portals.local_src_base, "Mix Gone", n_audio=1)
    make_session_tree(portals.local_src_base, "Mix Late", n_audio=1)

    def submit(source: str, **extra: Any) -> int:
        response = client.post("/jobs", json={
            "source_portal_id": portals.local_src, "source_path": source,
            "target_portal_id": portals.local_dst, **extra})
        assert response.status_code == 201, response.text
        return int(response.json()["id"])

    # Before any worker runs: one job the API cancels, one whose source disappears.
    cancelled = submit("Mix Late")
    assert client.post(f"/jobs/{cancelled}/cancel").json()["status"] == "CANCELLED"
    failed = submit("Mix Gone")
    for path in sorted(doomed.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    doomed.rmdir()
    # A job with its own URL too; that receiver path fails twice before it answers.
    receiver.fail_first["/own"] = 2
    done = submit("Mix A", notify_url=f"{receiver.url}/own")

    worker = stack.start_worker(webhook_url=f"{receiver.url}/all, {receiver.url}/second",
                                webhook_secret=SECRET, webhook_backoff_s=0.2,
                                max_attempts=1)
    ended = {j: stack.wait_job(client, j, FINAL, timeout=60) for j in (cancelled, failed, done)}
    assert [ended[j]["status"] for j in (cancelled, failed, done)] == [
        "CANCELLED", "FAILED", "DONE"]

    wait_until(lambda: len(receiver.on("/all")) >= 3 and len(receiver.on("/own")) >= 3,
               timeout=30, what="the webhooks")
    time.sleep(1.5)  # nothing more may come: exactly one per job and URL
    for path in ("/all", "/second"):
        bodies = [_verified(p) for p in receiver.on(path)]
        assert sorted(b["id"] for b in bodies) == sorted((cancelled, failed, done)), path
    own = [_verified(p) for p in receiver.on("/own")]
    assert [b["id"] for b in own] == [done] * 3  # 500, 500, then 204: no fourth

    by_id = {b["id"]: b for b in (_verified(p) for p in receiver.on("/all"))}
    ok = by_id[done]
    assert ok["status"] == "DONE" and ok["event"] == "job.ended"
    assert ok["source"] == {"portal_id": portals.local_src, "portal": "lab", "path": "Mix A"}
    assert ok["files_copied"] == ok["n_files"] == 9 and ok["bytes_copied"] > 0
    assert ok["duration_s"] > 0 and ok["error"] is None
    assert ok["links"]["manifest"].endswith(f"/jobs/{done}/manifest")
    assert by_id[failed]["status"] == "FAILED"
    assert "SourceMissing" in by_id[failed]["error"]["type"]
    assert by_id[cancelled]["status"] == "CANCELLED"
    assert "identity_file" not in json.dumps(by_id) and "/own" not in json.dumps(by_id)

    notes = [e for e in stack.events(client, done) if e["event_type"] == "notify"]
    own_notes = [e["payload"] for e in notes if e["payload"]["attempt"] and
                 not e["payload"]["ok"]]
    assert len(own_notes) == 2 and all(n["outcome"] == "HTTP 500" for n in own_notes)
    assert sum(1 for e in notes if e["payload"]["ok"]) == 3  # /all, /second, /own
    assert receiver.url + "/own" not in json.dumps(notes)  # URLs shown without their path
    assert f"job {done} DONE: ok" in worker.log_text()
    assert f"job {failed} FAILED: SourceMissingError" in worker.log_text()


def test_slack_format_and_signature() -> None:
    summary = {"id": 7, "status": "FAILED", "source": {"portal": "lab", "path": "Mix"},
               "target": {"portal": "srvtrf", "path": ""}, "files_copied": 0,
               "bytes_copied": 0, "duration_s": None,
               "error": {"type": "SshAuthError", "message": "key refused"}}
    assert slack_body(summary) == {
        "text": ":x: Ketter job 7 FAILED: lab:Mix -> srvtrf:/ - key refused"}

    class Slack:
        webhook_format = "slack"

    body = encode(summary, Slack())  # type: ignore[arg-type]
    assert json.loads(body) == slack_body(summary)
    assert sign(b"{}", "k") == "sha256=" + hmac.new(b"k", b"{}", hashlib.sha256).hexdigest()

