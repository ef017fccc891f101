"""Initial schema: portals, jobs, job_events, workers.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Migrations are frozen: types, CHECK expressions and allowed values are spelled out
here, never imported from the models (they move on, this file must not). Enums are
VARCHAR(16) + a named CHECK, the same DDL the models' non-native Enum produces, so
a database built here and one built by ``metadata.create_all`` are identical (a test
compares them constraint by constraint).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _one_of(column: str, values: Sequence[str], name: str) -> sa.CheckConstraint:
    """A named ``column IN (...)`` CHECK: the database's copy of a Python enum."""
    allowed = ", ".join(f"'{v}'" for v in values)
    return sa.CheckConstraint(f"{column} IN ({allowed})", name=op.f(name))


def _timestamp(name: str, *, now: bool = True) -> sa.Column:
    if now:
        return sa.Column(
            name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        )
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def upgrade() -> None:
    op.create_table(
        "portals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("username", sa.String(length=64), nullable=True),
        sa.Column("base_path", sa.Text(), nullable=False),
        sa.Column("identity_file", sa.Text(), nullable=True),
        sa.Column("known_hosts_file", sa.Text(), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_portals")),
        sa.UniqueConstraint("name", name=op.f("uq_portals_name")),
        _one_of("kind", ("local", "ssh"), "ck_portals_portal_kind"),
        sa.CheckConstraint(
            "kind <> 'ssh' OR host IS NOT NULL", name=op.f("ck_portals_ssh_needs_host")
        ),
        sa.CheckConstraint(
            "port IS NULL OR (port > 0 AND port < 65536)", name=op.f("ck_portals_port_range")
        ),
        sa.CheckConstraint("base_path LIKE '/%'", name=op.f("ck_portals_base_path_absolute")),
        sa.CheckConstraint("length(name) > 0", name=op.f("ck_portals_name_not_empty")),
    )

    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        _timestamp("started_at"),
        _timestamp("last_heartbeat_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )

    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("source_portal_id", sa.Integer(), nullable=False),
        sa.Column("source_path", sa.Text(), nullable=False),
        sa.Column("target_portal_id", sa.Integer(), nullable=False),
        sa.Column("target_path", sa.Text(), nullable=False),
        sa.Column(
            "requested_strategy", sa.String(length=16), server_default="auto", nullable=False
        ),
        sa.Column("strategy", sa.String(length=16), nullable=True),
        sa.Column("status", sa.String(length=16), server_default="PENDING", nullable=False),
        sa.Column("n_files", sa.Integer(), server_default="0", nullable=False),
        sa.Column("total_bytes", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("files_copied", sa.Integer(), server_default="0", nullable=False),
        sa.Column("bytes_copied", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("progress_bytes", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "cancel_requested", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
        sa.Column("worker_id", sa.String(length=200), nullable=True),
        sa.Column("error_type", sa.String(length=100), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        _timestamp("started_at", now=False),
        _timestamp("finished_at", now=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.ForeignKeyConstraint(
            ["source_portal_id"],
            ["portals.id"],
            name=op.f("fk_jobs_source_portal_id_portals"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["target_portal_id"],
            ["portals.id"],
            name=op.f("fk_jobs_target_portal_id_portals"),
            ondelete="RESTRICT",
        ),
        _one_of("mode", ("copy", "move"), "ck_jobs_job_mode"),
        _one_of(
            "requested_strategy", ("auto", "direct", "zip_first"), "ck_jobs_requested_strategy"
        ),
        _one_of("strategy", ("DIRECT", "ZIP_FIRST"), "ck_jobs_strategy"),
        _one_of(
            "status", ("PENDING", "RUNNING", "DONE", "FAILED", "CANCELLED"), "ck_jobs_job_status"
        ),
        sa.CheckConstraint(
            "n_files >= 0 AND total_bytes >= 0 AND files_copied >= 0 AND bytes_copied >= 0 "
            "AND progress_bytes >= 0 AND attempts >= 0",
            name=op.f("ck_jobs_counters_non_negative"),
        ),
        sa.CheckConstraint(
            "finished_at IS NULL OR started_at IS NULL OR finished_at >= started_at",
            name=op.f("ck_jobs_finished_after_started"),
        ),
    )
    op.create_index("ix_jobs_status_created", "jobs", ["status", "created_at"])
    op.create_index("ix_jobs_source_portal_id", "jobs", ["source_portal_id"])
    op.create_index("ix_jobs_target_portal_id", "jobs", ["target_portal_id"])

    op.create_table(
        "job_events",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        _timestamp("created_at"),
        sa.Column("level", sa.String(length=16), server_default="info", nullable=False),
        sa.Column("event_type", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), server_default="", nullable=False),
        sa.Column(
            "payload",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_events")),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_events_job_id_jobs"), ondelete="CASCADE"
        ),
        _one_of("level", ("info", "warning", "error"), "ck_job_events_event_level"),
        _one_of(
            "event_type",
            (
                "created",
                "queued",
                "started",
                "plan",
                "phase",
                "progress",
                "retry",
                "done",
                "error",
                "cancelled",
                "recovered",
            ),
            "ck_job_events_event_type",
        ),
        sa.CheckConstraint(
            "jsonb_typeof(payload) = 'object'", name=op.f("ck_job_events_payload_is_object")
        ),
    )
    # "Events of job X in order": WHERE job_id = X ORDER BY id, served by one index scan.
    op.create_index("ix_job_events_job_id_id", "job_events", ["job_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_job_events_job_id_id", table_name="job_events")
    op.drop_table("job_events")
    op.drop_index("ix_jobs_target_portal_id", table_name="jobs")
    op.drop_index("ix_jobs_source_portal_id", table_name="jobs")
    op.drop_index("ix_jobs_status_created", table_name="jobs")
    op.drop_table("jobs")
    op.drop_table("workers")
    op.drop_table("portals")
