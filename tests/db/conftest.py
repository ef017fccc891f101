"""Small builders for rows the DB tests need (a portal, a job), on ``db_session``."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session

from mvp_core.db.models import Job, JobMode, Portal, PortalKind


@pytest.fixture
def make_portal(db_session: Session) -> Callable[..., Portal]:
    def make(name: str = "lab", **overrides: Any) -> Portal:
        fields: dict[str, Any] = {"name": name, "kind": PortalKind.LOCAL, "base_path": "/data/lab"}
        fields.update(overrides)
        portal = Portal(**fields)
        db_session.add(portal)
        db_session.flush()
        return portal

    return make


@pytest.fixture
def make_job(db_session: Session, make_portal: Callable[..., Portal]) -> Callable[..., Job]:
    numbers = itertools.count(1)

    def make(**overrides: Any) -> Job:
        if "source_portal_id" not in overrides or "target_portal_id" not in overrides:
            source = make_portal(f"portal-{next(numbers)}")
            overrides.setdefault("source_portal_id", source.id)
            overrides.setdefault("target_portal_id", source.id)
        fields: dict[str, Any] = {
            "mode": JobMode.COPY,
            "source_path": "session_01",
            "target_path": "incoming",
        }
        fields.update(overrides)
        job = Job(**fields)
        db_session.add(job)
        db_session.flush()
        return job

    return make
