"""Alembic environment for Ketter, configured by our code, never by a hard-coded URL.

Where the database comes from, first match wins:
1. ``config.attributes["connection"]``: an open Connection (``mvp_core.db.migrate``
   passes one so the upgrade runs in one transaction under an advisory lock);
2. ``config.attributes["database_url"]`` or the ``sqlalchemy.url`` main option;
3. ``get_settings().database_url`` (``KETTER_DATABASE_URL``), for the bare ``alembic`` CLI.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from mvp_core.db.models import Base

config = context.config
target_metadata = Base.metadata

# Only the CLI has an ini file with logging sections; programmatic callers keep theirs.
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _database_url() -> str:
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    if url:
        return str(url)
    from mvp_core.config import get_settings  # the CLI edge: settings read here only

    return get_settings().database_url


def _configure(connection: Connection | None = None, url: str | None = None) -> None:
    context.configure(
        connection=connection,
        url=url,
        target_metadata=target_metadata,
        literal_binds=connection is None,
        compare_type=True,
        compare_server_default=True,
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade head --sql``) without a database."""
    _configure(url=_database_url())
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(_database_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            _configure(connection=conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
