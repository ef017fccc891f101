"""A portal names its remote rsync: ``portals.rsync_path`` (issue 17, Mac hosts).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

A Mac's non-interactive ssh PATH is ``/usr/bin:/bin:/usr/sbin:/sbin``: a Homebrew rsync
in ``/opt/homebrew/bin`` is only used when the portal names it. NULL: the first
``rsync`` on the remote PATH. Absolute, plain characters (the API checks; the engine
checks again).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("portals", sa.Column("rsync_path", sa.Text(), nullable=True))
    op.create_check_constraint(op.f("ck_portals_rsync_path_absolute"), "portals",
                               "rsync_path IS NULL OR rsync_path LIKE '/%'")


def downgrade() -> None:
    op.drop_constraint(op.f("ck_portals_rsync_path_absolute"), "portals", type_="check")
    op.drop_column("portals", "rsync_path")
