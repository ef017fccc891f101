"""Sites and limits: which LAB host runs a job, and how many jobs a portal takes at once.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03

- ``portals.site``: the site (LAB host) whose disks a local portal's base path is on; an
  ssh portal may pin one. Null: any worker may run jobs on it (a one-host install).
- ``portals.max_concurrent_jobs``: at most this many RUNNING jobs read or write the
  portal at once (null: no limit).
- ``jobs.site``: the site that must run the job (from its portals at submit; null: any).
- ``workers.site``: the site a worker serves; ``workers.polling``: its arq poll loop
  reaches Redis (a worker that heart-beats but cannot take jobs is not ok).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("portals", sa.Column("site", sa.String(length=100), nullable=True))
    op.add_column("portals", sa.Column("max_concurrent_jobs", sa.Integer(), nullable=True))
    op.create_check_constraint(
        op.f("ck_portals_max_concurrent_jobs_positive"), "portals",
        "max_concurrent_jobs IS NULL OR max_concurrent_jobs > 0")
    op.add_column("jobs", sa.Column("site", sa.String(length=100), nullable=True))
    op.create_index("ix_jobs_status_site_id", "jobs", ["status", "site", "id"])
    op.add_column("workers", sa.Column("site", sa.String(length=100), nullable=True))
    op.add_column("workers", sa.Column("polling", sa.Boolean(), nullable=False,
                                       server_default=sa.true()))


def downgrade() -> None:
    op.drop_column("workers", "polling")
    op.drop_column("workers", "site")
    op.drop_index("ix_jobs_status_site_id", table_name="jobs")
    op.drop_column("jobs", "site")
    op.drop_constraint(op.f("ck_portals_max_concurrent_jobs_positive"), "portals", type_="check")
    op.drop_column("portals", "max_concurrent_jobs")
    op.drop_column("portals", "site")
