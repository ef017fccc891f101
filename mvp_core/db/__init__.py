"""Postgres data model (SQLAlchemy 2.0), sessions and Alembic migrations."""
