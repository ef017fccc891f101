"""Live truth while a job runs: phase, files done, speed and ETA from GET /jobs/{id}.

A bandwidth-limited job (rsync --bwlimit in the worker) so the numbers can be checked
against the clock: the ETA read halfway must land within 20 % of the real end.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from mvp_core.speed import SpeedMeter
from tests.fixtures.stack import Stack, wait_until
from tests.service.conftest import create_portals

FINAL = frozenset({"DONE", "FAILED", "CANCELLED"})


def test_running_job_shows_phase_speed_and_an_eta_that_converges(
        ketter_stack: Stack, tmp_path: Path, sshd: Any) -> None:
    stack = ketter_stack
    api = stack.start_api()
    client = stack.client(api)
    portals = create_portals(client, tmp_path / "p", sshd)
    stems = portals.local_src_base / "Stems"
    stems.mkdir()
    for i in range(3):  # rsync counts a file once it is complete: 3 give a count midway
        (stems / f"Take_{i:03d}.wav").write_bytes(os.urandom(3_500_000))
    stack.start_worker(rsync_bwlimit_kib_s=1024)  # ~10 s of sending
    job_id = client.post("/jobs", json={
        "source_portal_id": portals.local_src, "source_path": "Stems",
        "target_portal_id": portals.ssh_dst, "strategy": "direct"}).json()["id"]

    samples: list[tuple[float, dict[str, Any]]] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        samples.append((time.time(), job))
        if job["status"] in FINAL:
            break
        time.sleep(0.25)
    final = samples[-1][1]
    assert final["status"] == "DONE", final
    for key in ("phase", "speed_bytes_per_s", "eta_s", "files_done"):
        assert final[key] is None, key  # not running: no live numbers

    running = [(t, j) for t, j in samples if j["status"] == "RUNNING"]
    live = [(t, j) for t, j in running if j["speed_bytes_per_s"] and j["eta_s"] is not None]
    assert live, running[-5:]
    phases = [j["phase"] for _, j in running]
    assert "send" in phases and set(phases) <= {"send", "verify", "deliver", None}, phases
    assert phases.index("send") < max(i for i, p in enumerate(phases) if p == "send")
    speeds = [j["speed_bytes_per_s"] for _, j in live if j["phase"] == "send"]
    assert all(0.5e6 < s < 2.5e6 for s in speeds[len(speeds) // 3:]), speeds  # ~1 MiB/s
    assert any(j["files_done"] in (1, 2) for _, j in live), [j["files_done"] for _, j in live]

    end = datetime.fromisoformat(final["finished_at"]).timestamp()
    # From halfway on, "now + ETA" lands within 20 % of the job's running time of the
    # real end (rsync reports about once a second, so single readings jump a little).
    start = running[0][0]
    for t, j in live:
        if j["phase"] == "send" and j["progress_percent"] >= 50:
            error = abs(t + j["eta_s"] - end)
            assert error <= 0.2 * (end - start), (error, end - start, j)


def test_speed_meter_window() -> None:
    meter = SpeedMeter(window_s=10)
    assert meter.add(0.0, 0) is None  # one sample: no speed yet
    for t in range(1, 21):
        speed = meter.add(float(t), t * 1000 if t <= 10 else 10_000 + (t - 10) * 4000)
    assert speed is not None and 3000 <= speed <= 4000  # follows the new rate in ~10 s
    assert meter.add(21.0, 0) is None  # progress went back: the window starts again


def _rsyncs_reading(path: Path) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"rsync") and any(str(path).encode() in a for a in argv):
            pids.append(int(entry))
    return pids


def test_a_retry_that_resumes_says_so_and_never_falls_back_to_zero(
        ketter_stack: Stack, tmp_path: Path, sshd: Any) -> None:
    stack = ketter_stack
    api = stack.start_api()
    client = stack.client(api)
    portals = create_portals(client, tmp_path / "p", sshd)
    stems = portals.local_src_base / "Stems"
    stems.mkdir()
    for i in range(3):
        (stems / f"Take_{i:03d}.wav").write_bytes(os.urandom(3_000_000))
    stack.start_worker(rsync_bwlimit_kib_s=1024, max_attempts=3)
    job_id = client.post("/jobs", json={
        "source_portal_id": portals.local_src, "source_path": "Stems",
        "target_portal_id": portals.ssh_dst, "strategy": "direct"}).json()["id"]

    def a_third_sent() -> dict[str, Any] | None:
        job = client.get(f"/jobs/{job_id}").json()
        return job if (job["progress_percent"] or 0) >= 35 else None

    before = wait_until(a_third_sent, timeout=30, interval=0.1, what="a third sent")
    pids = _rsyncs_reading(stems)
    assert pids
    for pid in pids:  # as a dropped link would: rsync exits 20, a transient failure
        os.kill(pid, signal.SIGTERM)
    lowest = before["progress_bytes"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        lowest = min(lowest, job["progress_bytes"])
        if job["status"] in FINAL:
            break
        time.sleep(0.1)
    assert job["status"] == "DONE" and job["attempts"] == 2, job
    assert lowest >= before["progress_bytes"]  # no fall back to 0 % between attempts
    resumed = [e for e in stack.events(client, job_id)
               if e["event_type"] == "progress" and "resuming" in e["message"]]
    assert len(resumed) == 1 and resumed[0]["payload"]["resumed_bytes"] >= lowest
