"""The whole Ketter stack for the bench: API on the host, arq worker inside LAB.

Postgres and Redis run on the host (scripts/bootstrap.sh services). The worker runs
in the LAB namespace, where 127.0.0.1:5432 and :6379 are socat bridges to the host's
(netlab.sh up sets them up), so it uses the same URLs as the API. The bench gets its
own database (``ketter_bench``), Redis db and queue, so it never touches a developer's
or a test's data; the jobs stay in ``ketter_bench`` for the calibration query in
docs/lab_report.md.

Portals: ``bench-lab-<tag>`` (local, LAB-side data) and one ssh portal per address of
REMOTE: ``bench-remote-10.203.0.2-<tag>`` (the LAN, no delay) and
``bench-remote-10.203.1.2-<tag>`` (the long link); ``<tag>`` is a hash of LAB_DIR.
A bench job is timed from just before ``POST /jobs`` to the first poll that sees DONE.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent
TERMINAL = {"DONE", "FAILED", "CANCELLED"}


class StackError(RuntimeError):
    pass


class Stack:
    def __init__(self, lab_env: dict[str, str], lab_dir: Path, py: str, log: Callable[[str], None]) -> None:
        self.lab_env = lab_env
        self.lab_dir = lab_dir
        self.py = py
        self.log = log
        self.port = int(os.environ.get("BENCH_API_PORT", "8799"))
        self.url = f"http://127.0.0.1:{self.port}"
        self.run_dir = lab_dir / "run"
        self.data_lab = lab_dir / "data" / "lab"
        self.data_remote = lab_dir / "data" / "remote"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "KETTER_DATABASE_URL": os.environ.get(
                "BENCH_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/ketter_bench"),
            "KETTER_REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9"),
            "KETTER_QUEUE_NAME": "ketter:bench",
            "KETTER_API_URL": self.url,
            "KETTER_TEMP_DIR": str(lab_dir / "data" / "tmp_lab"),
            "KETTER_REMOTE_TEMP_DIR": str(lab_dir / "data" / "tmp_remote"),
        }
        self.env.pop("KETTER_API_TOKEN", None)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.portals: dict[str, int] = {}
        self.ssh_portal: int | None = None

    # --- life cycle -------------------------------------------------------------------

    @classmethod
    def try_start(cls, lab_env: dict[str, str], lab_dir: Path, py: str,
                  log: Callable[[str], None]) -> Stack | None:
        for need in ("mvp_core/app/main.py", "mvp_core/worker/run.py",
                     "mvp_core/transfer_engine/zip_first.py"):
            if not (REPO / need).exists():
                log(f"stack: {need} missing, no API runs")
                return None
        stack = cls(lab_env, lab_dir, py, log)
        try:
            stack.start()
        except Exception as exc:  # noqa: BLE001  the bench falls back to the CLI
            log(f"stack: failed to start: {exc}")
            stack.stop()
            return None
        return stack

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run([self.py, "-m", "mvp_core.db.migrate"], env=self.env, cwd=REPO,
                       check=True, capture_output=True)
        self._spawn("api", [self.py, "-m", "uvicorn", "mvp_core.app.main:app",
                            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"])
        self._spawn("worker", ["ip", "netns", "exec", self.lab_env["LAB_NS"],
                               self.py, "-m", "arq", "mvp_core.worker.run.WorkerSettings"])
        deadline = time.monotonic() + 60
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise StackError(f"{name} exited: {self._tail(name)}")
            try:
                health = self._get("/health")
                if health.get("worker_ok"):
                    break
            except (OSError, StackError):
                pass
            if time.monotonic() > deadline:
                raise StackError(f"no healthy stack after 60 s: api {self._tail('api')} worker {self._tail('worker')}")
            time.sleep(0.3)
        # Portal names carry a hash of LAB_DIR: a second lab (another LAB_DIR) gets its own
        # portals instead of fighting over ones that old jobs still reference.
        tag = hashlib.sha256(str(self.lab_dir).encode()).hexdigest()[:6]
        self.portals["lab"] = self._portal({"name": f"bench-lab-{tag}", "kind": "local",
                                            "base_path": str(self.data_lab)})
        for host in (self.lab_env["REMOTE_ADDR"], self.lab_env["REMOTE_ADDR_DELAYED"]):
            self.portals[host] = self._portal({
                "name": f"bench-remote-{host}-{tag}", "kind": "ssh", "base_path": str(self.data_remote),
                "host": host, "port": int(self.lab_env["SSH_PORT"]),
                "username": self.lab_env["REMOTE_USER"], "identity_file": self.lab_env["IDENTITY"],
                "known_hosts_file": self.lab_env["KNOWN_HOSTS"]})
        self.log(f"stack: API {self.url}, worker in {self.lab_env['LAB_NS']}, portals {self.portals}")

    def _spawn(self, name: str, argv: list[str]) -> None:
        logf = open(self.run_dir / f"bench-{name}.log", "ab")  # noqa: SIM115  the child keeps it
        self.procs[name] = subprocess.Popen(argv, env=self.env, cwd=REPO, stdout=logf, stderr=logf,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        (self.run_dir / f"bench-{name}.pid").write_text(str(self.procs[name].pid))

    def _tail(self, name: str) -> str:
        try:
            return (self.run_dir / f"bench-{name}.log").read_text()[-1500:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM each process group we started (uvicorn; the worker and its rsync/ssh children)."""
        for name, proc in self.procs.items():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            (self.run_dir / f"bench-{name}.pid").unlink(missing_ok=True)
        self.procs.clear()

    # --- HTTP ---------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise StackError(f"{method} {path} -> {exc.code}: {exc.read()[:500]!r}") from exc

    def _get(self, path: str) -> Any:
        return self._call("GET", path)

    def _portal(self, body: dict[str, Any]) -> int:
        for p in self._get("/portals"):
            if p["name"] == body["name"]:
                same = all(p.get(k) == v for k, v in body.items())
                if same:
                    return int(p["id"])
                self._call("DELETE", f"/portals/{p['id']}")  # stale spec (e.g. another LAB_DIR)
        return int(self._call("POST", "/portals", body)["id"])

    # --- bench hooks --------------------------------------------------------------------

    def set_lab(self, lab: Any) -> None:
        self.ssh_portal = self.portals[lab.host]

    def run_job(self, src: Path, dest: Path, strategy: str) -> tuple[float, dict[str, Any]]:
        """POST a job, poll until it ends; (seconds submit -> DONE, facts from the job and its events)."""
        assert self.ssh_portal is not None
        body = {"source_portal_id": self.portals["lab"], "source_path": str(src.relative_to(self.data_lab)),
                "target_portal_id": self.ssh_portal, "target_path": str(dest.relative_to(self.data_remote)),
                "mode": "copy", "strategy": strategy}
        t0 = time.perf_counter()
        job = self._call("POST", "/jobs", body)
        while job["status"] not in TERMINAL:
            time.sleep(0.02)
            job = self._get(f"/jobs/{job['id']}")
        secs = time.perf_counter() - t0
        events = self._get(f"/jobs/{job['id']}/events?limit=5000")
        if job["status"] != "DONE":
            raise StackError(f"job {job['id']} {job['status']}: {job.get('error_type')} {job.get('error_message')}")
        return secs, {"job_id": job["id"], "strategy": job["strategy"], "worker_duration_s": job["duration_s"],
                      "phase_timings": phase_timings(events), "plan": plan_payload(events),
                      "queue_wait_s": queue_wait(job), **engine_facts(events)}

    def method(self, strategy: str) -> Callable[..., Any]:
        from bench import Sample  # local import: bench imports this module

        def run(lab: Any, src: Path, dest: Path) -> Any:
            secs, facts = self.run_job(src, dest, strategy)
            return Sample(secs, facts)

        return run

    def one_file_overhead(self, data_base: Path, dest: Path, n: int) -> dict[str, object]:
        """Submit -> DONE for a 1-file job (1 KiB), n times: the API + worker overhead."""
        src = data_base / "ONE" / "one"
        src.mkdir(parents=True, exist_ok=True)
        (src / "take.wav").write_bytes(b"\0" * 1024)
        secs, facts = [], []
        for i in range(n):
            target = dest / f"run{i}"
            shutil.rmtree(target, ignore_errors=True)  # jobs refuse an existing output by default
            target.mkdir(parents=True)
            s, f = self.run_job(src, target, "auto")
            secs.append(round(s, 3))
            facts.append({"worker_duration_s": f["worker_duration_s"], "queue_wait_s": f["queue_wait_s"],
                          "phase_timings": f["phase_timings"]})
        return {"seconds": secs, "median_s": round(statistics.median(secs), 3), "jobs": facts}


def phase_timings(events: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds per phase: the DONE event's ``phase_timings``, else PHASE events summed per name."""
    for e in events:
        done = (e.get("payload") or {}).get("phase_timings")
        if e.get("event_type") == "done" and isinstance(done, dict) and done:
            return {str(k): float(v) for k, v in done.items()}
    out: dict[str, float] = {}
    for e in events:
        p = e.get("payload") or {}
        if e.get("event_type") == "phase" and isinstance(p.get("duration_s"), (int, float)):
            name = str(p.get("phase"))
            out[name] = round(out.get(name, 0.0) + float(p["duration_s"]), 3)
    return out


# Facts the engine puts in its phase details (issue 7): streams DIRECT used, chunks ZIP_FIRST
# built, the most temp space the zips took on each side.
ENGINE_FACTS = ("streams", "chunks", "peak_local_temp_bytes", "peak_remote_temp_bytes")


def engine_facts(events: list[dict[str, Any]]) -> dict[str, int]:
    """The largest value of each ENGINE_FACTS key found in the job's phase events."""
    out: dict[str, int] = {}
    for e in events:
        details = (e.get("payload") or {}).get("details") or {}
        for key in ENGINE_FACTS:
            value = details.get(key) if isinstance(details, dict) else None
            if isinstance(value, int) and not isinstance(value, bool):
                out[key] = max(out.get(key, 0), value)
    return out


def plan_payload(events: list[dict[str, Any]]) -> dict[str, Any]:
    for e in events:
        if e.get("event_type") == "plan":
            return {k: v for k, v in (e.get("payload") or {}).items() if k != "manifest"}
    return {}


def queue_wait(job: dict[str, Any]) -> float | None:
    """Seconds from created_at to started_at (the worker's pick-up delay)."""
    from datetime import datetime

    if not job.get("started_at"):
        return None
    a = datetime.fromisoformat(job["created_at"])
    b = datetime.fromisoformat(job["started_at"])
    return round((b - a).total_seconds(), 3)
