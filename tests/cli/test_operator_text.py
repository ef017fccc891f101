"""What operators read: human sizes and durations, one-line API errors, the worker's
job-end line, clipped 422 input. Pure functions; the real-stack tests drive the rest."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from mvp_core.app.limits import clip_input
from mvp_core.cli.api import ApiError, KetterApi
from mvp_core.cli.watch import plain_line
from mvp_core.units import human_bytes, human_duration, human_speed
from mvp_core.worker.notify import end_line


@pytest.mark.parametrize(("n", "text"), [(0, "0 B"), (999, "999 B"), (1_900_000_000, "1.9 GB"),
                                         (12_345_678, "12.3 MB"), (None, "-")])
def test_human_bytes(n: int | None, text: str) -> None:
    assert human_bytes(n) == text


@pytest.mark.parametrize(("s", "text"), [(0.42, "0.4 s"), (42, "42 s"), (134, "2 min 14 s"),
                                         (3 * 3600 + 300, "3 h 05 min"),
                                         (3 * 86400 + 3600 * 4, "3 d 4 h"), (None, "-")])
def test_human_duration(s: float | None, text: str) -> None:
    assert human_duration(s) == text


def test_human_speed() -> None:
    assert human_speed(1_048_576) == "1.0 MB/s" and human_speed(None) == "-"


def _api(status: int, body: Any) -> KetterApi:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body)
    return KetterApi("http://api", transport=httpx.MockTransport(handler))


def test_api_errors_read_as_one_line_with_the_field() -> None:
    detail = [{"loc": ["body", "notify_url"], "msg": "Value error, must be http(s)",
               "type": "value_error"}]
    with pytest.raises(ApiError, match=r"^invalid request: notify_url: must be http\(s\)$"):
        _api(422, {"detail": detail}).submit({})
    with pytest.raises(ApiError, match="^job 9 not found$") as err:
        _api(404, {"detail": "job 9 not found"}).job(9)
    assert err.value.status_code == 404
    with pytest.raises(ApiError, match="does not serve manifests"):
        _api(404, {"detail": "Not Found"}).manifest(9)  # an API without the route
    with pytest.raises(ApiError, match="^job 9 not found$"):
        _api(404, {"detail": "job 9 not found"}).manifest(9)
    with pytest.raises(ApiError, match="does not serve manifests"):
        _api(404, {"detail": "Not Found"}).manifest(9, csv=True)
    with pytest.raises(ApiError, match="^job 9 is RUNNING"):
        _api(409, {"detail": "job 9 is RUNNING; its manifest comes when it is DONE"}
             ).manifest(9)
    with pytest.raises(ApiError, match="KETTER_API_TOKEN"):
        _api(401, {"detail": "missing or wrong API token"}).jobs(status=None, limit=1)


def test_plain_watch_line_has_phase_numbers_speed_and_eta() -> None:
    job = {"id": 3, "status": "RUNNING", "attempts": 1, "strategy": "DIRECT", "phase": "send",
           "progress_percent": 42.0, "progress_bytes": 420_000_000,
           "total_bytes": 1_000_000_000, "files_done": 12, "n_files": 40,
           "speed_bytes_per_s": 50_000_000.0, "eta_s": 11.6}
    assert plain_line(job) == ("job 3 RUNNING send:  42.0% 420.0 MB of 1.0 GB, 12/40 files  "
                               "50.0 MB/s  ETA 12 s")


def test_worker_end_line() -> None:
    summary = {"id": 5, "status": "FAILED", "n_files": 10, "total_bytes": 2_000_000,
               "files_copied": 0, "bytes_copied": 0, "duration_s": 75.0, "attempts": 3,
               "strategy": "DIRECT",
               "error": {"type": "SshConnectionError", "message": "connection lost"}}
    assert end_line(summary) == ("job 5 FAILED: SshConnectionError: connection lost; 10 files, "
                                 "2.0 MB, 1 min 15 s, -, 3 attempt(s), DIRECT")


def test_clip_input_never_echoes_a_huge_value() -> None:
    assert clip_input("short") == "short"
    clipped = clip_input("x" * 1_000_000)
    assert len(clipped) < 300 and clipped.endswith("(1000000 chars)")
    big = {"name": "y" * 5000}
    assert len(json.dumps(clip_input(big))) < 300
