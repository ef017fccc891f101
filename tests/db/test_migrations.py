"""Migrations on the real Postgres: up, down, up again; no drift from the models."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, create_engine, inspect, pool, text

from mvp_core.db.migrate import (
    _MIGRATION_LOCK_KEY,
    create_database_if_missing,
    current_revision,
    downgrade_to_base,
    head_revision,
    is_at_head,
    upgrade_to_head,
)
from mvp_core.db.models import Base

KETTER_TABLES = {"portals", "jobs", "job_events", "workers"}


def _tables(url: str) -> set[str]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _schema_fingerprint(url: str) -> dict[str, set[tuple[str, ...]]]:
    """Columns, constraints (with their SQL) and indexes, as Postgres itself reports them."""
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            columns = conn.execute(
                text(
                    "SELECT table_name, column_name, data_type, "
                    "coalesce(character_maximum_length::text, ''), is_nullable, "
                    "coalesce(column_default, '') "
                    "FROM information_schema.columns WHERE table_schema = 'public' "
                    "AND table_name <> 'alembic_version'"
                )
            ).all()
            constraints = conn.execute(
                text(
                    "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
                    "FROM pg_constraint WHERE connamespace = 'public'::regnamespace "
                    "AND conrelid::regclass::text <> 'alembic_version'"
                )
            ).all()
            indexes = conn.execute(
                text(
                    "SELECT tablename, indexname, indexdef FROM pg_indexes "
                    "WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
                )
            ).all()
    finally:
        engine.dispose()
    return {
        "columns": {tuple(map(str, r)) for r in columns},
        "constraints": {tuple(map(str, r)) for r in constraints},
        "indexes": {tuple(map(str, r)) for r in indexes},
    }


def test_upgrade_downgrade_upgrade_on_an_empty_database(
    fresh_database_url: Callable[..., str],
) -> None:
    url = fresh_database_url()
    assert current_revision(url) is None
    assert not is_at_head(url)

    upgrade_to_head(url)
    assert current_revision(url) == head_revision()
    assert is_at_head(url)
    assert KETTER_TABLES <= _tables(url)

    upgrade_to_head(url)  # idempotent: already at head
    assert current_revision(url) == head_revision()

    downgrade_to_base(url)
    assert current_revision(url) is None
    assert _tables(url) & KETTER_TABLES == set()

    upgrade_to_head(url)
    assert is_at_head(url)
    assert KETTER_TABLES <= _tables(url)


def test_autogenerate_finds_no_drift_between_models_and_migrations(database_url: str) -> None:
    engine = create_engine(database_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_migrated_schema_equals_create_all_including_checks(
    database_url: str, fresh_database_url: Callable[..., str]
) -> None:
    """Autogenerate ignores CHECK constraints; compare them (and everything else) here."""
    from_models = fresh_database_url()
    engine = create_engine(from_models, poolclass=pool.NullPool)
    try:
        Base.metadata.create_all(engine)
    finally:
        engine.dispose()

    migrated = _schema_fingerprint(database_url)
    modelled = _schema_fingerprint(from_models)
    for part in ("columns", "constraints", "indexes"):
        assert migrated[part] == modelled[part], part
    names = {row[1] for row in migrated["constraints"]}
    assert {"ck_jobs_counters_non_negative", "ck_portals_portal_kind"} <= names
    # Portal names are unique among live portals (a removed one frees its name).
    indexes = {row[1]: row[2] for row in migrated["indexes"]}
    assert "WHERE (deleted_at IS NULL)" in indexes["uq_portals_live_name"]


def test_migrate_cli_creates_the_missing_database_and_reaches_head(
    fresh_database_url: Callable[..., str],
) -> None:
    url = fresh_database_url(create=False)
    env = {**os.environ, "KETTER_DATABASE_URL": url}

    check = subprocess.run(
        [sys.executable, "-m", "mvp_core.db.migrate", "--check"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert check.returncode == 2, check.stderr  # database does not exist yet

    first = subprocess.run(
        [sys.executable, "-m", "mvp_core.db.migrate"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert "created" in first.stdout
    assert is_at_head(url)

    again = subprocess.run(
        [sys.executable, "-m", "mvp_core.db.migrate"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "created" not in again.stdout

    check = subprocess.run(
        [sys.executable, "-m", "mvp_core.db.migrate", "--check"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout
    assert head_revision() in check.stdout


def test_migrate_cli_check_reports_an_unmigrated_database(
    fresh_database_url: Callable[..., str],
) -> None:
    url = fresh_database_url()
    check = subprocess.run(
        [sys.executable, "-m", "mvp_core.db.migrate", "--check"],
        env={**os.environ, "KETTER_DATABASE_URL": url},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert check.returncode == 1
    assert "base (empty)" in check.stdout
    assert _tables(url) & KETTER_TABLES == set()  # --check changed nothing


def test_password_never_printed(fresh_database_url: Callable[..., str]) -> None:
    url = fresh_database_url(create=False).replace("postgres@", "postgres:s3cr3t-pw@", 1)
    out = subprocess.run(
        [sys.executable, "-m", "mvp_core.db.migrate", "--check"],
        env={**os.environ, "KETTER_DATABASE_URL": url},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert "s3cr3t-pw" not in out.stdout + out.stderr
    assert "***" in out.stdout + out.stderr


def test_concurrent_migrate_processes_do_not_race(fresh_database_url: Callable[..., str]) -> None:
    """An API and workers starting together all migrate; the advisory lock serialises them.

    The test holds the migration lock until every process is queued on it, so the
    processes really do start their upgrades at the same moment.
    """
    url = fresh_database_url()
    env = {**os.environ, "KETTER_DATABASE_URL": url}
    engine = create_engine(url, poolclass=pool.NullPool)
    procs: list[subprocess.Popen[str]] = []
    try:
        with engine.connect() as holder:
            holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            procs = [
                subprocess.Popen(
                    [sys.executable, "-m", "mvp_core.db.migrate"],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for _ in range(4)
            ]
            deadline = time.monotonic() + 30
            while _advisory_waiters(holder) < len(procs):
                assert time.monotonic() < deadline, "migrate processes never queued on the lock"
                time.sleep(0.05)
            holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            holder.commit()
        results = [p.communicate(timeout=60) + (p.returncode,) for p in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        engine.dispose()
    assert [rc for _, _, rc in results] == [0, 0, 0, 0], [err for _, err, _ in results]
    assert is_at_head(url)
    ran = [err for _, err, _ in results if "Running upgrade" in err]
    assert len(ran) == 1  # one process migrated, the others found the schema at head


def _advisory_waiters(conn: Connection) -> int:
    return int(
        conn.execute(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        ).scalar_one()
    )


def test_concurrent_database_creation_is_tolerated(fresh_database_url: Callable[..., str]) -> None:
    url = fresh_database_url(create=False)
    barrier = threading.Barrier(4)
    outcomes: list[bool | Exception] = []

    def create() -> None:
        barrier.wait(timeout=10)
        try:
            outcomes.append(create_database_if_missing(url))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            outcomes.append(exc)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes, key=str) == [False, False, False, True]  # created exactly once
    assert current_revision(url) is None  # exists, empty


def test_alembic_cli_takes_the_url_from_ketter_settings(
    fresh_database_url: Callable[..., str],
) -> None:
    """alembic.ini holds no URL: the bare CLI migrates the database KETTER_DATABASE_URL names."""
    url = fresh_database_url()
    root = Path(__file__).resolve().parents[2]
    alembic = [sys.executable, "-m", "alembic", "-c", str(root / "alembic.ini")]
    env = {**os.environ, "KETTER_DATABASE_URL": url}
    up = subprocess.run(
        [*alembic, "upgrade", "head"],
        cwd=root, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert is_at_head(url)
    drift = subprocess.run(
        [*alembic, "check"],
        cwd=root, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert drift.returncode == 0, drift.stdout + drift.stderr
    assert "No new upgrade operations detected" in drift.stdout + drift.stderr
