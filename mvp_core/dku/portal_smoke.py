"""Opt-in smoke transfer to every ssh portal (``--smoke-portals``).

The portal checks prove ssh answers and the tools are there; only a real job proves the
worker can write into the portal. For each ssh portal the DKU makes a scratch folder
``<base path>/.ketter-dku/<run>/`` over ssh (as the worker reaches the portal: same key,
same known_hosts), submits one copy job of the smoke tree into it, waits for DONE, counts
what arrived, and removes the scratch folder whatever happened. Opt-in: it writes on the
operator's storage, so it never runs unasked.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

import httpx

from mvp_core.db.models import PortalKind
from mvp_core.dku.options import DkuOptions
from mvp_core.dku.portals import load_portals, ssh_endpoint
from mvp_core.dku.result import CheckFailed, CheckResult, Outcome, one_line, run_check
from mvp_core.dku.smoke import PORTAL_PREFIX, SMOKE_FILES, SmokeRun, _expect, wait_final
from mvp_core.transfer_engine import remote_sh
from mvp_core.transfer_engine.ssh import remote_command_argv

SCRATCH = ".ketter-dku"
_SSH_MARGIN_S = 20.0


def _ssh(
    portal: dict[str, Any], opts: DkuOptions, remote_argv: Sequence[str]
) -> subprocess.CompletedProcess[str]:
    argv = remote_command_argv(ssh_endpoint(portal, opts), remote_argv, opts.engine)
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            errors="replace",
            stdin=subprocess.DEVNULL,
            timeout=opts.engine.ssh_connect_timeout_s + _SSH_MARGIN_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(f"ssh to {portal['host']} did not finish: {remote_argv[0]}") from exc


def smoke_portal(
    client: httpx.Client,
    portal: dict[str, Any],
    opts: DkuOptions,
    run: SmokeRun,
    *,
    src_id: int,
    run_name: str,
    file_count: int,
) -> Outcome:
    """One copy job into the portal's scratch folder, counted on arrival, then removed."""
    base = PurePosixPath(portal["base_path"])
    scratch = base / SCRATCH / run_name
    made = _ssh(portal, opts, ("mkdir", "-p", "--", str(scratch)))
    if made.returncode != 0:
        raise CheckFailed(
            f"cannot create {scratch} on {portal['host']}: {one_line(made.stderr, 200)}"
        )
    removed: subprocess.CompletedProcess[str] | None = None
    try:
        job = _expect(
            client.post(
                "/jobs",
                json={
                    "mode": "copy",
                    "source_portal_id": src_id,
                    "source_path": run_name,
                    "target_portal_id": portal["id"],
                    "target_path": f"{SCRATCH}/{run_name}",
                    "strategy": "auto",
                },
            ),
            f"POST /jobs (to portal {portal['name']})",
            200,
            201,
            202,
        )
        run.job_id = int(job["id"])
        final = wait_final(client, run.job_id, opts.smoke_timeout_s)
        run.status, run.chosen_strategy = final.get("status"), final.get("strategy")
        run.job_duration_s = final.get("duration_s")
        if run.status != "DONE":
            run.error = one_line(
                f"{final.get('error_type') or ''} {final.get('error_message') or ''}"
            )
            raise CheckFailed(f"job {run.job_id} {run.status}: {run.error}", job_id=run.job_id)
        counted = _ssh(
            portal,
            opts,
            ("sh", "-c", remote_sh.COUNT_FILES, "ketter-dku", str(scratch / run_name)),
        )
        arrived = int(counted.stdout.strip()) if counted.stdout.strip().isdigit() else None
        if arrived != file_count:
            run.error = f"{arrived} of {file_count} files arrived"
            raise CheckFailed(
                f"job {run.job_id} DONE but {run.error} in {scratch}", job_id=run.job_id
            )
        run.files_verified = arrived
    finally:
        removed = _ssh(portal, opts, ("rm", "-rf", "--", str(scratch)))
        _ssh(portal, opts, ("rmdir", "--", str(base / SCRATCH)))  # only when no other run uses it
    detail = (
        f"job {run.job_id} {run.chosen_strategy} DONE into {portal['host']}:{scratch},"
        f" {run.files_verified} files arrived"
    )
    if removed.returncode != 0:
        raise CheckFailed(
            f"{detail}, but {scratch} was not removed: {one_line(removed.stderr, 160)}"
        )
    return Outcome(f"{detail}, scratch removed", data={"job_id": run.job_id})


def portal_smoke_checks(
    opts: DkuOptions, client: httpx.Client, src_id: int, run_name: str
) -> tuple[list[CheckResult], list[SmokeRun]]:
    """One ``smoke_portal:<name>`` check per ssh portal (the DKU's own excepted); the
    shape ``run_smoke``'s ``extra`` wants once ``opts`` is bound."""
    portals = [
        p
        for p in load_portals(opts.database_url)
        if p["kind"] is PortalKind.SSH and not p["name"].startswith(PORTAL_PREFIX)
    ]
    results: list[CheckResult] = []
    runs: list[SmokeRun] = []
    for portal in portals:
        run = SmokeRun(f"portal:{portal['name']}")
        result = run_check(
            f"smoke_portal:{portal['name']}",
            lambda p=portal, r=run: smoke_portal(
                client, p, opts, r, src_id=src_id, run_name=run_name, file_count=len(SMOKE_FILES)
            ),
        )
        if result.status.value == "fail" and run.error is None:
            run.error = result.detail
        results.append(result)
        runs.append(run)
    return results, runs
