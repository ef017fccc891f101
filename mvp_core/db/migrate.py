"""Bring a Ketter database to the schema head: ``python -m mvp_core.db.migrate``.

``make migrate``, the API/worker start-up scripts, the DKU check and the tests all
call these functions, so there is one way to migrate. The URL is always passed in
(``main`` reads ``KETTER_DATABASE_URL`` through the settings); nothing is hard-coded.

An upgrade runs in one transaction (Postgres DDL is transactional) while holding an
advisory lock, so an API and a worker starting together cannot race each other.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, make_url, pool, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError, OperationalError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Arbitrary, fixed key for pg_advisory_xact_lock: "ketter migrate".
_MIGRATION_LOCK_KEY = 0x6B6574746572

# duplicate_database, or the unique index on pg_database when two CREATEs overlap.
_ALREADY_EXISTS = frozenset({"42P04", "23505"})

log = logging.getLogger(__name__)


def alembic_config(database_url: str | None = None) -> Config:
    """An Alembic Config pointing at the packaged migrations (no ini file needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["configure_logging"] = False
    if database_url is not None:
        cfg.attributes["database_url"] = database_url
    return cfg


def head_revision() -> str:
    """The newest revision shipped with this code."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships a revision
        raise RuntimeError(f"no Alembic revision found under {MIGRATIONS_DIR}")
    return head


def current_revision(database_url: str) -> str | None:
    """The revision the database is at; None for an empty (never migrated) database."""
    engine = create_engine(database_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def is_at_head(database_url: str) -> bool:
    """True when the database schema matches this code (the DKU check)."""
    return current_revision(database_url) == head_revision()


def _run_locked(database_url: str, action: str, revision: str) -> None:
    engine = create_engine(database_url, poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            _lock(conn)
            cfg = alembic_config(database_url)
            cfg.attributes["connection"] = conn
            getattr(command, action)(cfg, revision)
    finally:
        engine.dispose()


def _lock(conn: Connection) -> None:
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})


def upgrade_to_head(database_url: str) -> None:
    """Apply every pending migration, atomically; a no-op when already at head."""
    _run_locked(database_url, "upgrade", "head")


def downgrade_to_base(database_url: str) -> None:
    """Drop everything the migrations created (tests, and a deliberate reset)."""
    _run_locked(database_url, "downgrade", "base")


def _can_connect(url: URL) -> bool:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect():
            return True
    except OperationalError:
        return False
    finally:
        engine.dispose()


def create_database_if_missing(database_url: str) -> bool:
    """Create the URL's database when the server lacks it; True if it was created.

    The default URL names database ``ketter``, which a fresh cluster does not have.
    An existing database is found by connecting to it, so a role without access to
    the maintenance databases (``postgres``, ``template1``) is fine once it exists.
    """
    url = make_url(database_url)
    if url.database is None:
        raise ValueError("the database URL names no database")
    if _can_connect(url):
        return False
    last_error: OperationalError | None = None
    for maintenance in ("postgres", "template1"):
        engine = create_engine(
            url.set(database=maintenance), poolclass=pool.NullPool, isolation_level="AUTOCOMMIT"
        )
        try:
            with engine.connect() as conn:
                return _create(conn, url.database)
        except OperationalError as exc:
            last_error = exc
        finally:
            engine.dispose()
    assert last_error is not None
    raise last_error


def _create(conn: Connection, name: str) -> bool:
    exists = conn.execute(
        text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
    ).scalar()
    if exists:
        return False
    quoted = conn.dialect.identifier_preparer.quote(name)
    try:
        conn.execute(text(f"CREATE DATABASE {quoted}"))
    except DBAPIError as exc:
        # Another process (API and worker starting together) created it first.
        if getattr(exc.orig, "pgcode", None) in _ALREADY_EXISTS:
            return False
        raise
    return True


def main(argv: list[str] | None = None) -> int:
    """CLI: create the database if needed, then upgrade it to head (or report)."""
    parser = argparse.ArgumentParser(prog="python -m mvp_core.db.migrate", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="only report; exit 1 if not at head, change nothing"
    )
    parser.add_argument("--downgrade-to-base", action="store_true", help="drop Ketter's tables")
    args = parser.parse_args(argv)
    # Alembic narrates each step at INFO; a --check only prints its verdict.
    level = logging.WARNING if args.check else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")

    from mvp_core.config import get_settings  # settings are read at the edge only

    database_url = get_settings().database_url
    shown = make_url(database_url).render_as_string(hide_password=True)
    head = head_revision()
    try:
        if args.check:
            current = current_revision(database_url)
            print(f"database {shown}: at {current or 'base (empty)'}, head is {head}")
            return 0 if current == head else 1
        if args.downgrade_to_base:
            downgrade_to_base(database_url)
            print(f"database {shown}: downgraded to base")
            return 0
        if create_database_if_missing(database_url):
            print(f"database {shown}: created")
        upgrade_to_head(database_url)
    except OperationalError as exc:
        print(f"migrate: cannot reach {shown}: {exc.orig}", file=sys.stderr)
        return 2
    print(f"database {shown}: at head {head}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
