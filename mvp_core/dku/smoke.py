"""Smoke transfers through the real API and worker: one DIRECT, one ZIP_FIRST.

A small tree is generated under ``<work dir>/ketter-dku-smoke/src/<run>/``, copied by two
jobs into ``.../dst/<run>/<strategy>/`` and compared file by file (size and SHA-256);
the run's directories are removed afterwards. The two local portals are named after
their base path and reused by later runs (jobs keep their portals, so they cannot be
deleted; reuse keeps the portal list from growing with every DKU run). The API leaves
them and their jobs out of ``GET /portals`` and ``GET /jobs`` unless ``include_dku=true``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from mvp_core.db.repository import DKU_PORTAL_PREFIX
from mvp_core.dku.checks import api_client
from mvp_core.dku.options import DkuOptions
from mvp_core.dku.result import CheckFailed, CheckResult, Outcome, Status, one_line, run_check

PORTAL_PREFIX = DKU_PORTAL_PREFIX  # the API hides these portals and their jobs by default
STRATEGIES = ("direct", "zip_first")
FINAL = frozenset({"DONE", "FAILED", "CANCELLED"})
_POLL_S = 0.25

# relative path -> size; a small studio-like tree: nested folders, a name with spaces and
# non-ASCII letters, an empty file, one file larger than rsync's first block.
SMOKE_FILES: dict[str, int] = {
    "Session File.ptx": 4096,
    "Audio Files/Kick_01.wav": 65536,
    "Audio Files/Snare_01.wav": 65536,
    "Audio Files/Vox Lead_01.wav": 300_000,
    "Audio Files/Céu_Ambiência.wav": 12345,
    "Audio Files/empty.wav": 0,
    "Bounced Files/mix v1.wav": 131072,
    "Session File Backups/Session File.bak.001.ptx": 4096,
    "Video Files/ref.txt": 17,
    "WaveCache.wfm": 777,
}


@dataclass
class SmokeRun:
    """What the report keeps of one smoke job."""

    strategy: str
    job_id: int | None = None
    status: str | None = None
    chosen_strategy: str | None = None
    submit_to_final_s: float | None = None
    job_duration_s: float | None = None
    files_verified: int = 0
    bytes_verified: int = 0
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def make_tree(root: Path) -> dict[str, tuple[int, str]]:
    """Write the smoke tree; return relative path -> (size, sha256)."""
    expected: dict[str, tuple[int, str]] = {}
    for rel, size in SMOKE_FILES.items():
        data = secrets.token_bytes(size)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expected[rel] = (size, hashlib.sha256(data).hexdigest())
    return expected


def read_tree(root: Path) -> dict[str, tuple[int, str]]:
    """Relative path -> (size, sha256) of every regular file under ``root``."""
    found: dict[str, tuple[int, str]] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            data = path.read_bytes()
            found[path.relative_to(root).as_posix()] = (len(data), hashlib.sha256(data).hexdigest())
    return found


def compare_trees(
    expected: dict[str, tuple[int, str]], got: dict[str, tuple[int, str]]
) -> str | None:
    """None when identical, else a one-line description of the first differences."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    differ = sorted(rel for rel in set(expected) & set(got) if expected[rel] != got[rel])
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
    if extra:
        problems.append(f"{len(extra)} unexpected (e.g. {extra[0]!r})")
    if differ:
        problems.append(f"{len(differ)} differ in size or content (e.g. {differ[0]!r})")
    return "; ".join(problems) or None


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _expect(response: httpx.Response, what: str, *codes: int) -> Any:
    if response.status_code not in codes:
        hint = " (set KETTER_API_TOKEN to the API's token)" if response.status_code == 401 else ""
        raise CheckFailed(
            f"{what}: HTTP {response.status_code}{hint}: {one_line(str(_body(response)), 200)}"
        )
    return _body(response)


def portal_name(role: str, base: Path) -> str:
    """Stable per base path, so runs on the same host reuse their two portals."""
    digest = hashlib.sha256(str(base).encode()).hexdigest()[:10]
    return f"{PORTAL_PREFIX}{role}-{digest}"


def ensure_local_portal(client: httpx.Client, role: str, base: Path) -> int:
    """The id of the DKU's local portal on ``base``, created on first use."""
    name = portal_name(role, base)
    response = client.post("/portals", json={"name": name, "kind": "local", "base_path": str(base)})
    if response.status_code in (200, 201):
        return int(response.json()["id"])
    if response.status_code != 409:
        _expect(response, f"POST /portals ({name})", 200, 201)
    listing = _expect(
        client.get("/portals", params={"include_dku": "true"}), "GET /portals", 200
    )
    items = listing.get("items", listing) if isinstance(listing, dict) else listing
    for portal in items:
        if portal.get("name") == name:
            if portal.get("base_path") != str(base) or portal.get("kind") != "local":
                raise CheckFailed(f"portal {name} exists but is not local on {base}")
            return int(portal["id"])
    raise CheckFailed(f"POST /portals said {name} exists, GET /portals does not list it")


def wait_final(client: httpx.Client, job_id: int, timeout_s: float) -> dict[str, Any]:
    """Poll the job until DONE/FAILED/CANCELLED or the deadline."""
    deadline = time.monotonic() + timeout_s
    job: dict[str, Any] = {}
    while True:
        job = _expect(client.get(f"/jobs/{job_id}"), f"GET /jobs/{job_id}", 200)
        if job.get("status") in FINAL:
            return job
        if time.monotonic() >= deadline:
            last = _last_event(client, job_id)
            # Do not leave a job writing into a directory the DKU is about to remove.
            try:
                client.post(f"/jobs/{job_id}/cancel")
            except httpx.HTTPError:
                pass
            raise CheckFailed(
                f"job {job_id} still {job.get('status')} after {timeout_s:.0f}s"
                f"{'; last event: ' + last if last else ''}",
                job_id=job_id,
            )
        time.sleep(_POLL_S)


def _last_event(client: httpx.Client, job_id: int) -> str | None:
    try:
        response = client.get(f"/jobs/{job_id}/events")
        events = _body(response)
        if isinstance(events, dict):
            events = events.get("items", events.get("events", []))
        if response.status_code == 200 and events:
            last = events[-1]
            return one_line(
                f"{last.get('event_type', last.get('type', ''))}: {last.get('message', '')}", 160
            )
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return None


def smoke_one(
    client: httpx.Client,
    run: SmokeRun,
    *,
    src_id: int,
    dst_id: int,
    run_name: str,
    dst_root: Path,
    expected: dict[str, tuple[int, str]],
    timeout_s: float,
) -> Outcome:
    """Submit one copy job, wait for it, verify what it wrote."""
    target_rel = f"{run_name}/{run.strategy}"
    (dst_root / target_rel).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    job = _expect(
        client.post(
            "/jobs",
            json={
                "mode": "copy",
                "source_portal_id": src_id,
                "source_path": run_name,
                "target_portal_id": dst_id,
                "target_path": target_rel,
                "strategy": run.strategy,
            },
        ),
        f"POST /jobs (strategy={run.strategy})",
        200,
        201,
        202,
    )
    run.job_id = int(job["id"])
    run.timings["submit_s"] = round(time.monotonic() - started, 3)
    final = wait_final(client, run.job_id, timeout_s)
    run.submit_to_final_s = round(time.monotonic() - started, 3)
    run.status = final.get("status")
    run.chosen_strategy = final.get("strategy")
    run.job_duration_s = final.get("duration_s")
    if run.status != "DONE":
        run.error = one_line(f"{final.get('error_type') or ''} {final.get('error_message') or ''}")
        raise CheckFailed(f"job {run.job_id} {run.status}: {run.error}", job_id=run.job_id)
    if (run.chosen_strategy or "").lower() != run.strategy:
        # Both paths must be proven: a job that quietly ran the other strategy proves neither.
        run.error = f"asked for {run.strategy}, the job ran {run.chosen_strategy}"
        raise CheckFailed(f"job {run.job_id}: {run.error}", job_id=run.job_id)
    got = read_tree(dst_root / target_rel / run_name)
    problem = compare_trees(expected, got)
    if problem:
        run.error = problem
        raise CheckFailed(
            f"job {run.job_id} DONE but the copy differs: {problem}", job_id=run.job_id
        )
    run.files_verified = len(got)
    run.bytes_verified = sum(size for size, _ in got.values())
    return Outcome(
        f"job {run.job_id} {run.chosen_strategy or run.strategy} DONE in"
        f" {run.submit_to_final_s:.1f}s, {run.files_verified} files"
        f" ({run.bytes_verified} bytes) identical",
        data={"job_id": run.job_id},
    )


# More smoke jobs from the same tree (the opt-in ssh portal smoke): called with the API
# client, the DKU's source portal id and the run's folder name while the tree exists.
ExtraSmoke = Callable[[httpx.Client, int, str], tuple[list[CheckResult], list[SmokeRun]]]


def run_smoke(
    opts: DkuOptions, extra: ExtraSmoke | None = None
) -> tuple[list[CheckResult], list[SmokeRun]]:
    """Both smoke jobs as checks, plus their records for the JSON report."""
    runs = [SmokeRun(strategy) for strategy in STRATEGIES]
    base = Path(opts.work_dir or tempfile.gettempdir()) / "ketter-dku-smoke"
    src_root, dst_root = base / "src", base / "dst"
    run_name = f"dku_{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}_{secrets.token_hex(3)}"
    results: list[CheckResult] = []
    client = api_client(opts)
    try:
        prepared: dict[str, Any] = {}

        def prepare() -> Outcome:
            src_root.mkdir(parents=True, exist_ok=True)
            dst_root.mkdir(parents=True, exist_ok=True)
            prepared["expected"] = make_tree(src_root / run_name)
            prepared["src"] = ensure_local_portal(client, "src", src_root)
            prepared["dst"] = ensure_local_portal(client, "dst", dst_root)
            return Outcome(
                f"tree of {len(SMOKE_FILES)} files in {src_root / run_name};"
                f" portals {prepared['src']} -> {prepared['dst']}"
            )

        setup = run_check("smoke_setup", prepare)
        results.append(setup)
        for run in runs:
            if setup.status is Status.FAIL:
                run.error = "not run: smoke setup failed"
                results.append(CheckResult(f"smoke_{run.strategy}", Status.FAIL, 0.0, run.error))
                continue
            result = run_check(
                f"smoke_{run.strategy}",
                partial(
                    smoke_one,
                    client,
                    run,
                    src_id=prepared["src"],
                    dst_id=prepared["dst"],
                    run_name=run_name,
                    dst_root=dst_root,
                    expected=prepared["expected"],
                    timeout_s=opts.smoke_timeout_s,
                ),
            )
            if result.status is Status.FAIL and run.error is None:
                run.error = result.detail
            results.append(result)
        if extra is not None and setup.status is not Status.FAIL:
            more_results, more_runs = extra(client, prepared["src"], run_name)
            results += more_results
            runs += more_runs
    finally:
        client.close()
        shutil.rmtree(src_root / run_name, ignore_errors=True)
        shutil.rmtree(dst_root / run_name, ignore_errors=True)
    return results, runs
