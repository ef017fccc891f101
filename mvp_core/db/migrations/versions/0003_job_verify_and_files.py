"""jobs.verify + jobs.write_mhl + jobs.manifest_algorithm, job_files (the per-job delivery receipt), and
the installation id.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

``verify``: ``checksum`` (the default, and what every existing row gets) or ``size``.
``job_files``: every delivered file of a DONE job with its size, mtime and content
hash (see docs/delivery.md). ``installation``: one row, this installation's id, made
on first use (``repository.installation_id``). Frozen like 0001: values spelled out here.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "jobs",
        sa.Column("verify", sa.String(length=16), server_default="checksum", nullable=False),
    )
    op.create_check_constraint(
        op.f("ck_jobs_verify"), "jobs", "verify IN ('checksum', 'size')"
    )
    op.add_column("jobs", sa.Column("write_mhl", sa.Boolean(), server_default=sa.false(),
                                    nullable=False))
    op.add_column("jobs", sa.Column("manifest_algorithm", sa.String(length=16), nullable=True))
    op.create_table(
        "job_files",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=True),
        sa.Column("hash", sa.String(length=128), nullable=True),
        sa.CheckConstraint("size >= 0", name=op.f("ck_job_files_size_non_negative")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_files_job_id_jobs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "path", name=op.f("pk_job_files")),
    )


    op.create_table(
        "installation",
        sa.Column("one", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
        sa.CheckConstraint("one", name=op.f("ck_installation_single_row")),
        sa.PrimaryKeyConstraint("one", name=op.f("pk_installation")),
    )


def downgrade() -> None:
    op.drop_table("installation")
    op.drop_table("job_files")
    op.drop_column("jobs", "manifest_algorithm")
    op.drop_column("jobs", "write_mhl")
    op.drop_constraint(op.f("ck_jobs_verify"), "jobs", type_="check")
    op.drop_column("jobs", "verify")
