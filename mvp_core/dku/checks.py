"""Host and service checks: Python, binaries, temp dir, Postgres, migrations, Redis, API, worker.

Each function returns an :class:`Outcome` or raises; :func:`run_check` turns a raise into
a failed :class:`CheckResult` carrying the reason. All network calls are bounded.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import Engine, create_engine, make_url, pool, text

from mvp_core.dku.options import DkuOptions
from mvp_core.dku.result import CheckFailed, Outcome, Status, one_line

MIN_PYTHON = (3, 11)
_VERSION_TIMEOUT_S = 10.0
_DB_CONNECT_TIMEOUT_S = 5

# binary -> (argv that prints a version, regex that finds it in stdout+stderr)
BINARIES: dict[str, tuple[tuple[str, ...], re.Pattern[str]]] = {
    "rsync": (("rsync", "--version"), re.compile(r"rsync\s+version\s+(\S+)")),
    "ssh": (("ssh", "-V"), re.compile(r"(OpenSSH[_\w.]*\S*)")),
    "zip": (("zip", "-v"), re.compile(r"This is Zip (\S+)")),
    "unzip": (("unzip", "-v"), re.compile(r"UnZip (\S+)")),
}


def check_python() -> Outcome:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] < MIN_PYTHON:
        raise CheckFailed(
            f"Python {version} < required {'.'.join(map(str, MIN_PYTHON))}", version=version
        )
    return Outcome(f"Python {version} ({sys.executable})", data={"version": version})


def check_binary(name: str) -> Outcome:
    """The binary is on PATH and answers with a version."""
    argv, pattern = BINARIES[name]
    path = shutil.which(argv[0])
    if path is None:
        raise CheckFailed(f"{name} not found on PATH (scripts/bootstrap.sh tools installs it)")
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=_VERSION_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    match = pattern.search(proc.stdout + "\n" + proc.stderr)
    if match is None:
        raise CheckFailed(
            f"{name} at {path} printed no version (exit {proc.returncode})", path=path
        )
    return Outcome(
        f"{name} {match.group(1)} at {path}", data={"version": match.group(1), "path": path}
    )


def _engine(database_url: str) -> Engine:
    return create_engine(
        database_url,
        poolclass=pool.NullPool,
        connect_args={"connect_timeout": _DB_CONNECT_TIMEOUT_S},
    )


def shown_url(database_url: str) -> str:
    """The database URL without its password, for the report."""
    return make_url(database_url).render_as_string(hide_password=True)


def check_postgres(opts: DkuOptions) -> Outcome:
    engine = _engine(opts.database_url)
    try:
        with engine.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar_one()
    finally:
        engine.dispose()
    return Outcome(
        f"PostgreSQL {version} at {shown_url(opts.database_url)}", data={"version": str(version)}
    )


def check_migrations(opts: DkuOptions) -> Outcome:
    from mvp_core.db.migrate import current_revision, head_revision

    head = head_revision()
    current = _with_connect_timeout(current_revision, opts.database_url)
    if current != head:
        raise CheckFailed(
            f"database at {current or 'base (empty)'}, code expects {head}: run make migrate",
            current=current,
            head=head,
        )
    return Outcome(f"at head {head}", data={"current": current, "head": head})


def _with_connect_timeout(fn: Callable[[str], str | None], database_url: str) -> str | None:
    """Call a helper that takes a URL, with libpq's connect timeout set in the URL."""
    url = make_url(database_url)
    if "connect_timeout" not in url.query:
        url = url.update_query_dict({"connect_timeout": str(_DB_CONNECT_TIMEOUT_S)})
    return fn(url.render_as_string(hide_password=False))


def check_redis(opts: DkuOptions) -> Outcome:
    client = redis.Redis.from_url(opts.redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        if not client.ping():
            raise CheckFailed("redis did not answer PING")
        info: dict[str, Any] = client.info("server")  # type: ignore[assignment]
        version = info.get("redis_version", "?")
    finally:
        client.close()
    return Outcome(f"Redis {version} answers PING", data={"version": str(version)})


def api_client(opts: DkuOptions) -> httpx.Client:
    """An HTTP client for the API, with the bearer token when one is configured."""
    headers = {"Authorization": f"Bearer {opts.api_token}"} if opts.api_token else {}
    return httpx.Client(base_url=opts.api_url, headers=headers, timeout=opts.http_timeout_s)


def check_api(opts: DkuOptions) -> Outcome:
    try:
        with api_client(opts) as client:
            response = client.get("/health")
    except httpx.HTTPError as exc:
        raise CheckFailed(
            f"API at {opts.api_url} unreachable: {type(exc).__name__}: {exc}"
            f" (is uvicorn running? make up)"
        ) from exc
    try:
        body = response.json()
    except ValueError:
        body = response.text
    summary = one_line(health_summary(body) if isinstance(body, dict) else str(body), 200)
    if response.status_code != 200:
        raise CheckFailed(
            f"GET /health answered {response.status_code}: {summary}",
            status_code=response.status_code,
            body=body,
        )
    if isinstance(body, dict) and body.get("status") not in (None, "ok"):
        # 200 but degraded: Postgres and Redis answer, no worker is alive (see "worker").
        return Outcome(
            f"{opts.api_url}/health 200 but {body.get('status')}: {summary}",
            Status.WARN,
            data={"body": body},
        )
    return Outcome(f"{opts.api_url}/health 200: {summary}", data={"body": body})


def health_summary(body: dict[str, Any]) -> str:
    """``/health``'s JSON as a sentence: "ok: database ok, redis ok, 1 of 2 workers alive
    (freshest heartbeat 1.2s ago)". Unknown shapes fall back to compact JSON."""
    import json

    try:
        parts = []
        for name in ("database", "redis"):
            service = body[name]
            parts.append(f"{name} {'ok' if service['ok'] else 'DOWN'}"
                         + (f" ({service['error']})" if service.get("error") else ""))
        workers = body.get("workers") or []
        alive = sum(1 for w in workers if w.get("alive"))
        worker = f"{alive} of {len(workers)} worker(s) alive"
        age = body.get("worker_heartbeat_age_s")
        if age is not None:
            worker += f" (freshest heartbeat {float(age):.1f}s ago)"
        return f"{body['status']}: {', '.join(parts)}, {worker}"
    except (KeyError, TypeError, ValueError):
        return json.dumps(body, separators=(",", ":"), sort_keys=True, default=str)


def check_worker(opts: DkuOptions) -> Outcome:
    """Alive = the newest heartbeat row in Postgres is younger than the limit."""
    engine = _engine(opts.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT id, EXTRACT(EPOCH FROM (now() - last_heartbeat_at)) AS age"
                    " FROM workers ORDER BY last_heartbeat_at DESC"
                )
            ).all()
    finally:
        engine.dispose()
    if not rows:
        raise CheckFailed("no worker heartbeat in the workers table (is an arq worker running?)")
    limit = opts.heartbeat_limit_s
    alive = [(wid, float(age)) for wid, age in rows if float(age) <= limit]
    if not alive:
        newest_id, newest_age = rows[0][0], float(rows[0][1])
        raise CheckFailed(
            f"no live worker: newest heartbeat {newest_age:.0f}s ago from {newest_id}"
            f" (limit {limit:.0f}s)",
            newest_age_s=round(newest_age, 1),
        )
    worker_id, age = alive[0]
    return Outcome(
        f"{len(alive)} live worker(s); {worker_id} beat {age:.1f}s ago (limit {limit:.0f}s)",
        data={"live_workers": [w for w, _ in alive], "newest_age_s": round(age, 1)},
    )


def check_temp_dir(opts: DkuOptions) -> Outcome:
    """The worker's local temp dir (ZIP_FIRST writes whole zips there) is writable, has room."""
    temp = Path(opts.engine.temp_dir)
    temp.mkdir(parents=True, exist_ok=True)  # the engine creates it the same way
    with tempfile.NamedTemporaryFile(dir=temp, prefix=".dku-probe-"):
        pass
    usage = os.statvfs(temp)
    free = usage.f_bavail * usage.f_frsize
    detail = f"{temp} writable, {free / 1024**3:.1f} GiB free for temp zips"
    if free < opts.min_free_bytes:
        return Outcome(
            f"{detail} (below {opts.min_free_bytes / 1024**3:.1f} GiB)",
            Status.WARN,
            data={"free_bytes": free},
        )
    return Outcome(detail, data={"free_bytes": free})


def host_checks(opts: DkuOptions) -> list[tuple[str, Callable[[], Outcome]]]:
    """Every check but portals and the smoke test, by name, in report order."""
    checks: list[tuple[str, Callable[[], Outcome]]] = [("python", check_python)]
    checks += [(name, partial(check_binary, name)) for name in BINARIES]
    checks.append(("temp_dir", lambda: check_temp_dir(opts)))
    checks += [
        ("postgres", lambda: check_postgres(opts)),
        ("migrations", lambda: check_migrations(opts)),
        ("redis", lambda: check_redis(opts)),
        ("api", lambda: check_api(opts)),
        ("worker", lambda: check_worker(opts)),
    ]
    return checks


__all__ = ["BINARIES", "api_client", "host_checks", "shown_url"]
