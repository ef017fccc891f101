"""The DKU end to end: as the operator runs it, against a real API, worker, Postgres, Redis."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.fixtures.redis import RedisServer
from tests.fixtures.sshd import SshServer
from tests.fixtures.stack import REPO_ROOT, Stack

DKU_TIMEOUT_S = 120


def run_dku(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m mvp_core.dku`` with exactly this KETTER_* environment."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("KETTER_")}
    child_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "mvp_core.dku", *args],
        env=child_env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=DKU_TIMEOUT_S,
        check=False,
    )


def read_report(report_dir: Path) -> tuple[str, dict[str, Any]]:
    txts, jsons = sorted(report_dir.glob("dku_*.txt")), sorted(report_dir.glob("dku_*.json"))
    assert len(txts) == 1 and len(jsons) == 1, list(report_dir.iterdir())
    assert txts[0].stem == jsons[0].stem
    return txts[0].read_text(), json.loads(jsons[0].read_text())


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"]}


def test_dku_passes_on_a_healthy_stack(
    ketter_stack: Stack, ketter_env: dict[str, str], sshd: SshServer, tmp_path: Path
) -> None:
    token = f"dku-token-{secrets.token_hex(12)}"
    api = ketter_stack.start_api(token=token)
    ketter_stack.start_worker(api_token=token)
    report_dir = tmp_path / "reports"
    # An operator's ssh portal, registered through the API: the DKU must probe it.
    remote_base = tmp_path / "srvtrf"
    remote_base.mkdir()
    created = ketter_stack.client(api, token=token).post(
        "/portals",
        json={
            "name": "srvtrf",
            "kind": "ssh",
            "host": sshd.host,
            "port": sshd.port,
            "username": sshd.user,
            "base_path": str(remote_base),
            "identity_file": str(sshd.identity_file),
            "known_hosts_file": str(sshd.known_hosts_file),
        },
    )
    assert created.status_code == 201, created.text

    proc = run_dku(
        {**ketter_env, "KETTER_API_TOKEN": token},
        "--api-url",
        api.url,
        "--report-dir",
        str(report_dir),
        "--work-dir",
        str(tmp_path / "work"),
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    text, report = read_report(report_dir)
    lines = text.splitlines()
    assert lines[-1].startswith("SUMMARY PASS: ")
    assert len(lines) == len(report["checks"]) + 2  # header, one line a check, summary
    got = statuses(report)
    expected = {
        "python",
        "rsync",
        "ssh",
        "zip",
        "unzip",
        "temp_dir",
        "postgres",
        "migrations",
        "redis",
        "api",
        "worker",
        "portals",
        "portal_keys:srvtrf",
        "portal:srvtrf",
        "smoke_setup",
        "smoke_direct",
        "smoke_zip_first",
    }
    assert set(got) == expected
    assert all(s == "ok" for s in got.values()), got
    assert report["exit_code"] == 0 and report["summary"]["fail"] == 0
    assert {"python", "rsync", "ssh", "zip", "unzip", "postgres", "redis"} <= set(
        report["versions"]
    )

    # The smoke jobs really ran, with the asked strategies: ask the API ourselves.
    runs = {r["strategy"]: r for r in report["smoke"]}
    assert set(runs) == {"direct", "zip_first"}
    client = ketter_stack.client(api, token=token)
    for strategy, chosen in (("direct", "DIRECT"), ("zip_first", "ZIP_FIRST")):
        run = runs[strategy]
        assert run["status"] == "DONE" and run["files_verified"] == 10
        assert run["submit_to_final_s"] > 0
        job = client.get(f"/jobs/{run['job_id']}").json()
        assert (job["status"], job["strategy"], job["requested_strategy"]) == (
            "DONE",
            chosen,
            strategy,
        )
    # The DKU cleaned up its tree and copies.
    assert not [p for p in (tmp_path / "work").rglob("*") if p.is_file()]

    # The token and the key never reach a report or the console.
    key_line = sshd.identity_file.read_text().splitlines()[1]
    for blob in (text, json.dumps(report), proc.stdout, proc.stderr):
        assert token not in blob and key_line not in blob

    # Without the token the smoke test cannot start, and says why.
    anonymous = run_dku(ketter_env, "--api-url", api.url, "--only", "smoke", "--no-report")
    assert anonymous.returncode == 1
    assert "HTTP 401 (set KETTER_API_TOKEN" in anonymous.stdout

    # A second run reuses the DKU's two portals instead of adding more.
    again = run_dku(
        {**ketter_env, "KETTER_API_TOKEN": token},
        "--api-url",
        api.url,
        "--report-dir",
        str(tmp_path / "reports2"),
        "--work-dir",
        str(tmp_path / "work"),
        "--quiet",
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.startswith("SUMMARY PASS")
    # srvtrf + the DKU's two, which (with their jobs) stay out of the operator's listings.
    assert [p["name"] for p in client.get("/portals").json()] == ["srvtrf"]
    assert len(client.get("/portals", params={"include_dku": "true"}).json()) == 3
    assert client.get("/jobs").json() == []
    assert len(client.get("/jobs", params={"include_dku": "true"}).json()) == 4  # 2 runs x 2


def test_dku_with_redis_stopped_fails_and_still_reports(
    ketter_stack: Stack, ketter_env: dict[str, str], redis_server: RedisServer, tmp_path: Path
) -> None:
    api = ketter_stack.start_api()
    ketter_stack.start_worker()
    report_dir = tmp_path / "reports"
    redis_server.stop()
    try:
        proc = run_dku(
            ketter_env,
            "--api-url",
            api.url,
            "--report-dir",
            str(report_dir),
            "--work-dir",
            str(tmp_path / "work"),
        )
    finally:
        redis_server.start()

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    text, report = read_report(report_dir)
    got = statuses(report)
    assert got["redis"] == "fail"
    assert "Connection" in next(c["detail"] for c in report["checks"] if c["name"] == "redis")
    assert got["postgres"] == "ok" and got["migrations"] == "ok"
    assert got["api"] == "fail"  # /health answers 503 without Redis
    assert got["smoke_direct"] == got["smoke_zip_first"] == "fail"
    assert report["exit_code"] == 1 and report["summary"]["passed"] is False
    assert text.splitlines()[-1].startswith("SUMMARY FAIL: ")
    assert any(line.startswith("FAIL redis ") for line in text.splitlines())


def test_dku_with_nothing_running_fails_every_service_check(tmp_path: Path) -> None:
    """Dead dependencies are failed checks with reasons, never a traceback."""
    env = {
        "KETTER_DATABASE_URL": "postgresql+psycopg2://postgres:pw-hidden@127.0.0.1:9/x",
        "KETTER_REDIS_URL": "redis://127.0.0.1:9/0",
    }
    proc = run_dku(env, "--api-url", "http://127.0.0.1:9", "--report-dir", str(tmp_path))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    text, report = read_report(tmp_path)
    got = statuses(report)
    for name in (
        "postgres",
        "migrations",
        "redis",
        "api",
        "worker",
        "portals",
        "smoke_direct",
        "smoke_zip_first",
    ):
        assert got[name] == "fail", name
    assert got["python"] == "ok"
    assert "pw-hidden" not in text + json.dumps(report) + proc.stdout


def test_dku_with_invalid_settings_reports_them(tmp_path: Path) -> None:
    proc = run_dku({"KETTER_SSH_CONNECT_TIMEOUT_S": "soon"}, "--report-dir", str(tmp_path))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    _, report = read_report(tmp_path)
    assert statuses(report) == {"settings": "fail"}
    assert "ssh_connect_timeout_s" in report["checks"][0]["detail"]


def test_health_degraded_without_worker_is_a_warning(
    ketter_stack: Stack, ketter_env: dict[str, str]
) -> None:
    api = ketter_stack.start_api()
    default_dir = REPO_ROOT / "docs" / "dku_reports"
    before = set(default_dir.iterdir())
    proc = run_dku(ketter_env, "--api-url", api.url, "--skip-smoke", "--no-report")
    assert proc.returncode == 1
    lines = {line.split()[1]: line.split()[0] for line in proc.stdout.splitlines()[1:-1]}
    assert lines["api"] == "WARN" and lines["worker"] == "FAIL"
    assert "smoke_direct" not in lines
    assert httpx.get(api.url + "/health", timeout=5).json()["status"] == "degraded"
    assert set(default_dir.iterdir()) == before  # --no-report wrote nothing

    # The compose worker healthcheck: one check, one line, the exit code says it all.
    probe = ("--only", "worker", "--no-report", "--quiet")
    dead = run_dku(ketter_env, *probe)
    assert (dead.returncode, dead.stdout.split(":")[0]) == (1, "SUMMARY FAIL")
    ketter_stack.start_worker()
    alive = run_dku(ketter_env, *probe)
    assert alive.returncode == 0, alive.stdout
    assert alive.stdout.startswith("SUMMARY PASS: 1 ok, 0 warn, 0 fail")


def test_dku_refuses_unknown_check_names(tmp_path: Path) -> None:
    proc = run_dku({}, "--only", "wrker", "--report-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "--only takes names from" in proc.stderr and "worker" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_dku_reports_a_failing_zip_first_path(
    ketter_stack: Stack, ketter_env: dict[str, str], tmp_path: Path
) -> None:
    """A worker that cannot write temp zips: DIRECT passes, ZIP_FIRST fails with the reason."""
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the temp dir should be")
    broken_temp = str(blocker / "ketter_tmp")
    api = ketter_stack.start_api()
    ketter_stack.start_worker(temp_dir=broken_temp, max_attempts=1)
    report_dir = tmp_path / "reports"
    proc = run_dku(
        {**ketter_env, "KETTER_TEMP_DIR": broken_temp},
        "--api-url",
        api.url,
        "--report-dir",
        str(report_dir),
        "--work-dir",
        str(tmp_path / "work"),
        "--smoke-timeout",
        "45",
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    _, report = read_report(report_dir)
    got = statuses(report)
    assert got["temp_dir"] == "fail"
    assert got["smoke_direct"] == "ok"
    assert got["smoke_zip_first"] == "fail"
    run = next(r for r in report["smoke"] if r["strategy"] == "zip_first")
    assert run["status"] == "FAILED" and run["job_id"] and run["error"]
    detail = next(c["detail"] for c in report["checks"] if c["name"] == "smoke_zip_first")
    assert f"job {run['job_id']} FAILED" in detail


def test_smoke_portals_writes_into_each_ssh_portal_and_cleans_up(
    ketter_stack: Stack, ketter_env: dict[str, str], sshd: SshServer, tmp_path: Path
) -> None:
    """``--smoke-portals``: one real job into every ssh portal's scratch folder, removed
    afterwards; a portal the worker cannot write into fails by name."""
    token = f"dku-token-{secrets.token_hex(12)}"
    api = ketter_stack.start_api(token=token)
    ketter_stack.start_worker(api_token=token)
    client = ketter_stack.client(api, token=token)
    remote_base = tmp_path / "srvtrf"
    (remote_base / "Show 101").mkdir(parents=True)  # the operator's own files stay
    for name, base in (("srvtrf", str(remote_base)), ("readonly", "/proc/ketter-dku-nowhere")):
        created = client.post("/portals", json={
            "name": name, "kind": "ssh", "host": sshd.host, "port": sshd.port,
            "username": sshd.user, "base_path": base,
            "identity_file": str(sshd.identity_file),
            "known_hosts_file": str(sshd.known_hosts_file),
        })
        assert created.status_code == 201, created.text

    proc = run_dku(
        {**ketter_env, "KETTER_API_TOKEN": token},
        "--api-url", api.url, "--report-dir", str(tmp_path / "reports"),
        "--work-dir", str(tmp_path / "work"), "--smoke-portals", "--only", "smoke",
    )
    _, report = read_report(tmp_path / "reports")
    got = {c["name"]: c for c in report["checks"]}
    assert got["smoke_portal:srvtrf"]["status"] == "ok", got["smoke_portal:srvtrf"]
    assert "10 files arrived, scratch removed" in got["smoke_portal:srvtrf"]["detail"]
    assert got["smoke_portal:readonly"]["status"] == "fail"
    readonly = got["smoke_portal:readonly"]["detail"]
    assert "cannot create /proc/ketter-dku-nowhere/.ketter-dku/" in readonly
    assert proc.returncode == 1  # the read-only portal failed
    run = next(r for r in report["smoke"] if r["strategy"] == "portal:srvtrf")
    job = client.get(f"/jobs/{run['job_id']}").json()
    assert job["status"] == "DONE" and job["target_path"] == f".ketter-dku/{job['source_path']}"
    assert sorted(p.name for p in remote_base.iterdir()) == ["Show 101"]  # scratch gone
    # Hidden from the operator's job list: its source is the DKU's smoke portal.
    assert run["job_id"] not in [j["id"] for j in client.get("/jobs").json()]
