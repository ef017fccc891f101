"""Single DKU checks against real Postgres and Redis, and the report writer."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, text

from mvp_core.dku.checks import (
    check_migrations,
    check_postgres,
    check_redis,
    check_temp_dir,
    check_worker,
    health_summary,
    shown_url,
)
from mvp_core.dku.options import DkuOptions
from mvp_core.dku.report import Report, redact, render, write_report
from mvp_core.dku.result import CheckResult, Status, run_check
from mvp_core.transfer_engine.options import EngineOptions


def opts(
    database_url: str,
    redis_url: str = "redis://127.0.0.1:9/0",
    *,
    api_token: str | None = None,
    engine_temp: Path | None = None,
    heartbeat_limit_s: float = 30.0,
) -> DkuOptions:
    engine = EngineOptions(temp_dir=engine_temp) if engine_temp else EngineOptions()
    return DkuOptions(
        database_url=database_url,
        redis_url=redis_url,
        api_url="http://127.0.0.1:9",
        api_token=api_token,
        engine=engine,
        heartbeat_limit_s=heartbeat_limit_s,
    )


def test_unmigrated_database_fails_migrations_only(fresh_database_url: Callable[..., str]) -> None:
    o = opts(fresh_database_url())
    assert run_check("postgres", lambda: check_postgres(o)).status is Status.OK
    result = run_check("migrations", lambda: check_migrations(o))
    assert result.status is Status.FAIL
    assert "base (empty)" in result.detail and "make migrate" in result.detail


def test_worker_liveness_from_heartbeats(clean_database_url: str, db_engine: Engine) -> None:
    o = opts(clean_database_url, heartbeat_limit_s=30.0)
    none = run_check("worker", lambda: check_worker(o))
    assert none.status is Status.FAIL and "no worker heartbeat" in none.detail

    old = datetime.now(UTC) - timedelta(seconds=120)
    with db_engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO workers (id, hostname, pid, started_at, last_heartbeat_at)"
                " VALUES ('w-old', 'h', 1, :t, :t)"
            ),
            {"t": old},
        )
    stale = run_check("worker", lambda: check_worker(o))
    assert stale.status is Status.FAIL
    assert "w-old" in stale.detail and "limit 30s" in stale.detail
    assert 115 <= stale.data["newest_age_s"] <= 200

    with db_engine.begin() as conn:
        conn.execute(text("INSERT INTO workers (id, hostname, pid) VALUES ('w-new', 'h', 2)"))
    live = run_check("worker", lambda: check_worker(o))
    assert live.status is Status.OK and live.data["live_workers"] == ["w-new"]


def test_redis_up_and_down(redis_url: str) -> None:
    up = run_check("redis", lambda: check_redis(opts("postgresql://x@127.0.0.1:9/x", redis_url)))
    assert up.status is Status.OK and up.data["version"]
    down = run_check("redis", lambda: check_redis(opts("postgresql://x@127.0.0.1:9/x")))
    assert down.status is Status.FAIL and "Connection" in down.detail


def test_secrets_are_found_and_redacted() -> None:
    token = "tok-" + "9f3a" * 8  # a generated token: long, masked wherever it appears
    o = opts("postgresql+psycopg2://u:db-pass-1@h/db", api_token=token)
    assert set(o.secrets()) == {token, "db-pass-1"}
    value = {"a": [f"x {token} y", ("postgresql://u:db-pass-1@h/db",)], "api_token": "short"}
    assert redact(value, o.secrets()) == {
        "a": ["x *** y", ["postgresql://u:***@h/db"]],
        "api_token": "***",
    }


def test_redaction_masks_credentials_not_words() -> None:
    """Compose's default password is ``ketter``: paths and names that contain it stay intact."""
    o = opts("postgresql+psycopg2://ketter:ketter@postgres:5432/ketter", api_token="ketter")
    secrets = o.secrets()
    lines = [
        "OK   temp_dir /tmp/ketter_tmp writable",
        "PostgreSQL 15 at postgresql+psycopg2://ketter:ketter@postgres:5432/ketter",
        "redis://:ketter@redis:6379/0 refused",
        "GET /jobs sent Authorization: Bearer ketter",
    ]
    assert [redact(line, secrets) for line in lines] == [
        "OK   temp_dir /tmp/ketter_tmp writable",
        "PostgreSQL 15 at postgresql+psycopg2://ketter:***@postgres:5432/ketter",
        "redis://:***@redis:6379/0 refused",
        "GET /jobs sent Authorization: Bearer ***",
    ]
    # A name that happens to equal the password is a name; a secret-named key is masked.
    assert redact({"user": "ketter", "password": "ketter"}, secrets) == {
        "user": "ketter",
        "password": "***",
    }


def test_report_shows_paths_and_urls_with_credentials_masked(tmp_path: Path) -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    o = opts("postgresql+psycopg2://ketter:ketter@postgres:5432/ketter")
    report = Report(
        started_at=now,
        finished_at=now + timedelta(seconds=1),
        api_url="http://api:8000",
        database=shown_url(o.database_url),
        checks=[CheckResult("temp_dir", Status.OK, 0.01, "/tmp/ketter_tmp writable")],
    )
    text, body = render(report, o.secrets())
    assert "/tmp/ketter_tmp writable" in text
    assert "postgresql+psycopg2://ketter:***@postgres:5432/ketter" in text
    assert ":ketter@" not in text + body
    assert json.loads(body)["database"] == "postgresql+psycopg2://ketter:***@postgres:5432/ketter"


def test_report_files_never_overwrite(tmp_path: Path) -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    checks = [
        CheckResult("python", Status.OK, 0.01, "Python 3.11 secret-x-0123456789abcdef"),
        CheckResult("redis", Status.FAIL, 0.2, "refused"),
    ]
    report = Report(
        started_at=now,
        finished_at=now + timedelta(seconds=1),
        api_url="u",
        database="d",
        checks=checks,
    )
    first = write_report(report, tmp_path, ("secret-x-0123456789abcdef",))
    second = write_report(report, tmp_path, ("secret-x-0123456789abcdef",))
    assert [p.name for p in first] == ["dku_20260102T030405Z.txt", "dku_20260102T030405Z.json"]
    assert [p.name for p in second] == ["dku_20260102T030405Z_2.txt", "dku_20260102T030405Z_2.json"]
    text_ = first[0].read_text()
    assert text_.splitlines()[-1] == "SUMMARY FAIL: 1 ok, 0 warn, 1 fail in 1.0s"
    assert "secret-x" not in text_ + first[1].read_text()
    body = json.loads(first[1].read_text())
    assert body["exit_code"] == 1 and body["summary"] == {
        "ok": 1,
        "warn": 0,
        "fail": 1,
        "passed": False,
    }


def test_temp_dir_is_created_and_probed(tmp_path: Path) -> None:
    temp = tmp_path / "ketter_tmp" / "local"
    good = opts("postgresql://x@127.0.0.1:9/x", engine_temp=temp)
    result = run_check("temp_dir", lambda: check_temp_dir(good))
    assert result.status is Status.OK and temp.is_dir() and result.data["free_bytes"] > 0
    assert not list(temp.iterdir())  # the probe file is gone

    (tmp_path / "a_file").write_text("x")
    bad = opts("postgresql://x@127.0.0.1:9/x", engine_temp=tmp_path / "a_file" / "tmp")
    failed = run_check("temp_dir", lambda: check_temp_dir(bad))
    assert failed.status is Status.FAIL and "NotADirectoryError" in failed.detail


def test_api_line_reads_as_a_sentence() -> None:
    body = {
        "status": "degraded",
        "database": {"ok": True, "error": None},
        "redis": {"ok": True, "error": None},
        "worker_ok": False,
        "worker_heartbeat_age_s": 41.25,
        "workers": [{"id": "w1", "alive": False}, {"id": "w2", "alive": False}],
    }
    assert health_summary(body) == (
        "degraded: database ok, redis ok, 0 of 2 worker(s) alive (freshest heartbeat 41.2s ago)"
    )
    down = body | {"status": "down", "workers": [], "worker_heartbeat_age_s": None}
    down["redis"] = {"ok": False, "error": "ConnectionError"}
    assert health_summary(down) == (
        "down: database ok, redis DOWN (ConnectionError), 0 of 0 worker(s) alive"
    )
    assert health_summary({"odd": 1}) == '{"odd":1}'
