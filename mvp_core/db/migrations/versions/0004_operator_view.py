"""Operators' view of jobs: live phase/speed/files, job-end notifications, removable portals.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

- ``jobs.phase``, ``jobs.files_done``, ``jobs.speed_bytes_per_s``: what a RUNNING job is
  doing now (the worker writes them with its progress; cleared when the job ends).
- ``jobs.notify_url``: a per-job webhook; ``jobs.notified_at``: the job-end notification
  was claimed (exactly one per ended job). Jobs that ended before this revision count as
  notified, so turning webhooks on never floods a receiver with old news.
- ``job_events.event_type`` gains ``notify`` (one event per webhook delivery attempt).
- ``portals.deleted_at``: a portal used only by ended jobs is removed from view but kept
  for their history; its name is free again (unique among live portals only).

Frozen like 0001: the allowed values are spelled out here.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_EVENT_TYPES = ("created", "queued", "started", "plan", "phase", "progress", "retry", "done",
                "error", "cancelled", "recovered")


def _event_type_check(values: Sequence[str]) -> None:
    allowed = ", ".join(f"'{v}'" for v in values)
    op.create_check_constraint(
        op.f("ck_job_events_event_type"), "job_events", f"event_type IN ({allowed})"
    )


def upgrade() -> None:
    op.add_column("jobs", sa.Column("phase", sa.String(length=32), nullable=True))
    op.add_column("jobs", sa.Column("files_done", sa.Integer(), nullable=True))
    op.add_column("jobs", sa.Column("speed_bytes_per_s", sa.Float(), nullable=True))
    op.add_column("jobs", sa.Column("notify_url", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("notified_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE jobs SET notified_at = coalesce(finished_at, now()) "
        "WHERE status IN ('DONE', 'FAILED', 'CANCELLED')"
    )
    op.drop_constraint(op.f("ck_job_events_event_type"), "job_events", type_="check")
    _event_type_check((*_EVENT_TYPES, "notify"))
    op.add_column("portals", sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
    op.drop_constraint(op.f("uq_portals_name"), "portals", type_="unique")
    op.create_index("uq_portals_live_name", "portals", ["name"], unique=True,
                    postgresql_where=sa.text("deleted_at IS NULL"))


def downgrade() -> None:
    op.drop_index("uq_portals_live_name", table_name="portals")
    op.execute("DELETE FROM portals WHERE deleted_at IS NOT NULL "
               "AND NOT EXISTS (SELECT 1 FROM jobs WHERE source_portal_id = portals.id "
               "OR target_portal_id = portals.id)")
    op.execute("UPDATE portals SET name = left(name, 80) || ' (deleted ' || id || ')' "
               "WHERE deleted_at IS NOT NULL")
    op.create_unique_constraint(op.f("uq_portals_name"), "portals", ["name"])
    op.drop_column("portals", "deleted_at")
    op.execute("DELETE FROM job_events WHERE event_type = 'notify'")
    op.drop_constraint(op.f("ck_job_events_event_type"), "job_events", type_="check")
    _event_type_check(_EVENT_TYPES)
    for column in ("notified_at", "notify_url", "speed_bytes_per_s", "files_done", "phase"):
        op.drop_column("jobs", column)
