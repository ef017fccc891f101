"""Checks for every registered portal, as the worker would reach it.

An ssh portal must answer in BatchMode with its host key already known (the engine's own
ssh argv: strict host-key checking, no prompt), have ``rsync`` (its ``rsync_path`` when
set) and ``unzip``, and have free space on its base path. Then the engine's own capability
probe (``transfer_engine.capabilities``) reports what the host is: its rsync's flavour,
version and protocol (GNU 3.x, a Mac's openrsync or rsync 2.6.9), find dialect, unzip,
hash tools; a host without any hash tool fails (jobs verify content by default). Key files a portal references must exist and must not be readable
by others (ssh itself refuses such keys; the DKU warns before a job fails on it).
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import time
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import create_engine, pool, select
from sqlalchemy.orm import Session

from mvp_core.db.models import Portal, PortalKind
from mvp_core.dku.options import DkuOptions
from mvp_core.dku.result import (
    CheckFailed,
    CheckResult,
    Outcome,
    Status,
    describe_exception,
    one_line,
    run_check,
)
from mvp_core.transfer_engine import capabilities, remote_sh
from mvp_core.transfer_engine.endpoints import SshEndpoint
from mvp_core.transfer_engine.errors import TransferError
from mvp_core.transfer_engine.ssh import classify_ssh_failure, remote_command_argv

REMOTE_TOOLS = remote_sh.DKU_TOOLS
_SSH_MARGIN_S = 20.0

_PROBE = remote_sh.DKU_PORTAL_PROBE



def load_portals(database_url: str) -> list[dict[str, Any]]:
    """Every portal as plain values (the session closes before any ssh runs)."""
    engine = create_engine(
        database_url, poolclass=pool.NullPool, connect_args={"connect_timeout": 5}
    )
    try:
        with Session(engine) as session:
            rows = session.scalars(select(Portal).order_by(Portal.id)).all()
            return [
                {
                    "id": p.id,
                    "name": p.name,
                    "kind": PortalKind(p.kind),
                    "host": p.host,
                    "port": p.port,
                    "username": p.username,
                    "base_path": p.base_path,
                    "identity_file": p.identity_file,
                    "known_hosts_file": p.known_hosts_file,
                    "rsync_path": p.rsync_path,
                }
                for p in rows
            ]
    finally:
        engine.dispose()


def check_key_files(portal: dict[str, Any], opts: DkuOptions) -> Outcome:
    """The identity and known_hosts files exist; the key is readable by its owner only."""
    notes: list[str] = []
    warn = False
    identity = portal["identity_file"]
    if identity:
        path = Path(identity)
        if not path.is_file():
            raise CheckFailed(f"identity file {identity} does not exist on this host")
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            warn = True
            who = "everyone" if mode & 0o004 else "its group"
            notes.append(
                f"identity file {identity} mode {mode:04o} is readable by {who}"
                f" (ssh refuses it; chmod 600)"
            )
        elif not os.access(path, os.R_OK):
            raise CheckFailed(f"identity file {identity} is not readable by this user")
        else:
            notes.append(f"identity file {identity} mode {mode:04o}")
    else:
        notes.append("no identity file (ssh agent or default keys)")
    known = portal["known_hosts_file"] or (
        str(opts.default_known_hosts) if opts.default_known_hosts else None
    )
    if known:
        if not Path(known).is_file():
            raise CheckFailed(f"known_hosts file {known} does not exist on this host")
        notes.append(f"known_hosts {known}")
    return Outcome("; ".join(notes), Status.WARN if warn else Status.OK)


def ssh_endpoint(portal: dict[str, Any], opts: DkuOptions) -> SshEndpoint:
    """How the worker reaches an ssh portal (its key, its known_hosts or the default)."""
    known = portal["known_hosts_file"] or opts.default_known_hosts
    return SshEndpoint(
        host=portal["host"],
        path=PurePosixPath(portal["base_path"]),
        user=portal["username"],
        port=portal["port"] or 22,
        identity_file=Path(portal["identity_file"]) if portal["identity_file"] else None,
        known_hosts_file=Path(known) if known else None,
        rsync_path=portal.get("rsync_path"),
    )


def check_ssh_portal(portal: dict[str, Any], opts: DkuOptions) -> Outcome:
    """One ssh round trip: reachable, host key known, tools present, free space."""
    endpoint = ssh_endpoint(portal, opts)
    argv = remote_command_argv(
        endpoint,
        ("sh", "-c", _PROBE, "ketter-dku", str(endpoint.path), opts.engine.remote_temp_dir,
         endpoint.rsync_path or "rsync"),
        opts.engine,
    )
    timeout = opts.engine.ssh_connect_timeout_s + _SSH_MARGIN_S
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(
            f"ssh {endpoint.destination}:{endpoint.port} did not finish in {timeout:.0f}s"
        ) from exc
    if proc.returncode != 0 and not proc.stdout.strip():
        cls_msg = classify_ssh_failure(proc.returncode, proc.stderr)
        reason = cls_msg[1] if cls_msg else f"exit {proc.returncode}"
        raise CheckFailed(
            f"{endpoint.destination} port {endpoint.port}: {reason}: {one_line(proc.stderr, 200)}",
            exit_code=proc.returncode,
        )
    return _with_capabilities(_judge_probe(proc.stdout, endpoint, opts), endpoint, opts)


def _with_capabilities(outcome: Outcome, endpoint: SshEndpoint, opts: DkuOptions) -> Outcome:
    """The engine's probe of the host, as jobs will see it: reported, and a host no job
    could verify on fails."""
    capabilities.forget(endpoint)  # the DKU reports the host as it is now
    try:
        caps = capabilities.of_host(endpoint, opts.engine)
    except TransferError as exc:
        raise CheckFailed(f"{endpoint.host}: cannot probe its tools: {exc}",
                          **outcome.data) from exc
    data = {**outcome.data, "capabilities": {
        "os": caps.os, "find": caps.find, "unzip": caps.unzip, "zip64": caps.zip64,
        "hash_tools": list(caps.hash_tools),
        "rsync": caps.rsync.describe() if caps.rsync else None,
        "rsync_flavour": caps.rsync.flavour if caps.rsync else None,
        "rsync_protocol": caps.rsync.protocol if caps.rsync else None}}
    if caps.rsync is None or caps.rsync.flavour == capabilities.UNKNOWN:
        raise CheckFailed(f"{endpoint.host}: {caps.rsync_command} is not a usable rsync "
                          f"({caps.describe()}); set the portal's rsync_path", **data)
    if not caps.hash_tools:
        raise CheckFailed(
            f"{endpoint.host}: no hash tool (xxhsum, sha256sum, shasum, md5sum or md5), so "
            f"content cannot be verified there: install one, or submit jobs with verify=size "
            f"({caps.describe()})", **data)
    return Outcome(f"{outcome.detail}; {caps.describe()}", outcome.status, data)


def _free_bytes(lines: list[str]) -> int | None:
    """Available bytes from ``df -Pk`` output (header, then one line for the filesystem)."""
    fields = lines[-1].split() if lines else []
    return int(fields[3]) * 1024 if len(fields) >= 4 and fields[3].isdigit() else None


def _judge_probe(stdout: str, endpoint: SshEndpoint, opts: DkuOptions) -> Outcome:
    tools: dict[str, str | None] = {}
    df: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        tag, _, rest = line.partition(" ")
        if tag == "tool":
            name, _, where = rest.partition(" ")
            tools[name] = None if where == "MISSING" else where
        elif tag.startswith("df-"):
            df.setdefault(tag, []).append(rest)
    if "df-base-error" in df:
        raise CheckFailed(
            f"base path {shlex.quote(str(endpoint.path))} on {endpoint.host}:"
            f" {one_line(' '.join(df['df-base-error']), 200)}"
        )
    free_bytes = _free_bytes(df.get("df-base-ok", []))
    temp_free = _free_bytes(df.get("df-temp-ok", []))
    missing = [t for t in REMOTE_TOOLS if not tools.get(t)]
    data = {"tools": tools, "free_bytes": free_bytes, "temp_free_bytes": temp_free}
    if missing:
        raise CheckFailed(
            f"{endpoint.host}: {', '.join(missing)} not installed (needed for DIRECT/ZIP_FIRST)",
            **data,
        )
    if free_bytes is None:
        raise CheckFailed(f"{endpoint.host}: could not read free space of {endpoint.path}", **data)
    gib = 1024**3
    detail = (
        f"{endpoint.destination}:{endpoint.port} reachable, host key known,"
        f" rsync+unzip present, {free_bytes / gib:.1f} GiB free on {endpoint.path}"
    )
    if temp_free is not None:
        detail += f", {temp_free / gib:.1f} GiB for temp zips ({opts.engine.remote_temp_dir})"
    low = [
        what
        for what, free in (("base path", free_bytes), ("temp dir", temp_free))
        if free is not None and free < opts.min_free_bytes
    ]
    if low:
        return Outcome(
            detail + f" (below {opts.min_free_bytes / gib:.1f} GiB: {', '.join(low)})",
            Status.WARN,
            data,
        )
    return Outcome(detail, data=data)


def check_local_portal(portal: dict[str, Any]) -> Outcome:
    """A local portal's base path exists here (run the DKU where the worker runs): every
    job from or to a portal whose base path is missing would fail."""
    base = Path(portal["base_path"])
    if not base.is_dir():
        what = "is not a directory" if base.exists() else "does not exist"
        raise CheckFailed(f"base path {base} {what} on this host")
    usage = os.statvfs(base)
    free = usage.f_bavail * usage.f_frsize
    return Outcome(f"base path {base}, {free / 1024**3:.1f} GiB free", data={"free_bytes": free})


def portal_checks(opts: DkuOptions, *, skip_prefix: str) -> list[CheckResult]:
    """One result per portal (two per ssh portal); portals named ``skip_prefix*`` are the DKU's."""
    started = time.monotonic()
    try:
        portals = [
            p for p in load_portals(opts.database_url) if not p["name"].startswith(skip_prefix)
        ]
    except Exception as exc:  # noqa: BLE001 - reported as a failed check
        return [
            CheckResult(
                "portals",
                Status.FAIL,
                time.monotonic() - started,
                f"cannot list portals: {describe_exception(exc)}",
            )
        ]
    ssh = [p for p in portals if p["kind"] is PortalKind.SSH]
    results = [
        CheckResult(
            "portals",
            Status.OK,
            time.monotonic() - started,
            f"{len(portals)} portal(s) registered, {len(ssh)} over ssh",
            {"count": len(portals), "ssh": len(ssh)},
        )
    ]
    for portal in portals:
        name = portal["name"]
        if portal["kind"] is PortalKind.SSH:
            results.append(run_check(f"portal_keys:{name}", partial(check_key_files, portal, opts)))
            results.append(run_check(f"portal:{name}", partial(check_ssh_portal, portal, opts)))
        else:
            results.append(run_check(f"portal:{name}", partial(check_local_portal, portal)))
    return results
