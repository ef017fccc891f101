"""How rows hang together: events in order, portals protected, jobs take their events along."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mvp_core.db.errors import PortalInUseError, StillReferencedError, translated_db_errors
from mvp_core.db.models import EventType, Job, JobEvent, Portal

MakePortal = Callable[..., Portal]
MakeJob = Callable[..., Job]

EVENTS_OF_JOB = "SELECT id, event_type FROM job_events WHERE job_id = :job_id ORDER BY id"


def test_events_of_a_job_come_back_in_order(db_session: Session, make_job: MakeJob) -> None:
    first, second = make_job(), make_job()
    kinds = [EventType.CREATED, EventType.QUEUED, EventType.STARTED, EventType.PLAN, EventType.DONE]
    for kind in kinds:  # interleave two jobs so ids of one job are not contiguous
        db_session.add(JobEvent(job_id=first.id, event_type=kind, payload={"k": kind.value}))
        db_session.add(JobEvent(job_id=second.id, event_type=EventType.PROGRESS))
        db_session.flush()
    db_session.commit()

    rows = db_session.execute(text(EVENTS_OF_JOB), {"job_id": first.id}).all()
    assert [r.event_type for r in rows] == [k.value for k in kinds]
    assert [r.id for r in rows] == sorted(r.id for r in rows)

    db_session.expire_all()
    reloaded = db_session.get(Job, first.id)
    assert reloaded is not None
    assert [e.event_type for e in reloaded.events] == kinds  # relationship ordered by id
    assert reloaded.events[3].payload == {"k": "plan"}


def test_events_of_a_job_are_read_through_the_index_without_sorting(
    db_session: Session, make_job: MakeJob
) -> None:
    job = make_job()
    db_session.add_all(JobEvent(job_id=job.id, event_type=EventType.PROGRESS) for _ in range(50))
    db_session.commit()
    db_session.execute(text("ANALYZE job_events"))
    # On a tiny table the planner would rightly pick a sequential scan; forbid it to
    # see which index serves the query, and that no separate sort is needed.
    db_session.execute(text("SET LOCAL enable_seqscan = off"))
    db_session.execute(text("SET LOCAL enable_bitmapscan = off"))
    plan = "\n".join(
        db_session.execute(text(f"EXPLAIN {EVENTS_OF_JOB}"), {"job_id": job.id}).scalars()
    )
    db_session.rollback()
    assert "ix_job_events_job_id_id" in plan, plan
    assert "Sort" not in plan, plan


def test_deleting_a_portal_used_by_a_job_is_refused(
    db_session: Session, make_portal: MakePortal, make_job: MakeJob
) -> None:
    lab, srvtrf = make_portal("lab"), make_portal("srvtrf", base_path="/srv/trf")
    make_job(source_portal_id=lab.id, target_portal_id=srvtrf.id)
    db_session.commit()

    for portal in (lab, srvtrf):  # both the source and the target side are protected
        db_session.delete(portal)
        with pytest.raises(PortalInUseError) as caught, translated_db_errors():
            db_session.flush()
        db_session.rollback()
        assert isinstance(caught.value, StillReferencedError)
        assert isinstance(caught.value.__cause__, IntegrityError)
        assert caught.value.status_code == 409
        assert "still used by jobs" in str(caught.value)
    assert db_session.scalar(select(Portal.id).where(Portal.name == "lab")) == lab.id

    # Raw SQL gets the same answer.
    with pytest.raises(PortalInUseError), translated_db_errors():
        db_session.execute(text("DELETE FROM portals WHERE id = :id"), {"id": srvtrf.id})
    db_session.rollback()


def test_an_unused_portal_can_be_deleted(db_session: Session, make_portal: MakePortal) -> None:
    spare = make_portal("spare")
    db_session.commit()
    db_session.delete(spare)
    db_session.commit()
    assert db_session.scalar(select(Portal).where(Portal.name == "spare")) is None


def test_deleting_a_job_deletes_its_events(db_session: Session, make_job: MakeJob) -> None:
    doomed, kept = make_job(), make_job()
    for job in (doomed, kept):
        db_session.add_all(
            JobEvent(job_id=job.id, event_type=t) for t in (EventType.CREATED, EventType.DONE)
        )
    db_session.commit()

    # Raw SQL: the database itself cascades, no ORM help.
    db_session.execute(text("DELETE FROM jobs WHERE id = :id"), {"id": doomed.id})
    db_session.commit()
    remaining = db_session.execute(text("SELECT DISTINCT job_id FROM job_events")).scalars().all()
    assert remaining == [kept.id]

    db_session.expire_all()
    db_session.delete(db_session.get(Job, kept.id))  # through the ORM too (passive_deletes)
    db_session.commit()
    assert db_session.execute(text("SELECT count(*) FROM job_events")).scalar() == 0


def test_each_test_starts_with_empty_tables_and_fresh_ids(
    db_session: Session, make_portal: MakePortal
) -> None:
    assert db_session.execute(text("SELECT count(*) FROM portals")).scalar() == 0
    assert make_portal("first").id == 1  # RESTART IDENTITY between tests
