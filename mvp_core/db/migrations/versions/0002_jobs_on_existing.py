"""jobs.on_existing: what a job does when its output name already exists.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

``fail`` (the default, and the value every existing row gets), ``replace`` or
``merge``; see docs/delivery.md. Frozen like 0001: the allowed values are spelled
out here, not imported from the models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "jobs",
        sa.Column("on_existing", sa.String(length=16), server_default="fail", nullable=False),
    )
    op.create_check_constraint(
        op.f("ck_jobs_on_existing"), "jobs", "on_existing IN ('fail', 'replace', 'merge')"
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_jobs_on_existing"), "jobs", type_="check")
    op.drop_column("jobs", "on_existing")
