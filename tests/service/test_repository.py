"""The state changes that race (claim, cancel, recovery), straight against Postgres."""

from __future__ import annotations

import pytest
from sqlalchemy import text, update
from sqlalchemy.orm import Session

from mvp_core.db import repository as repo
from mvp_core.db.models import (
    EventType,
    Job,
    JobMode,
    JobStatus,
    PortalKind,
    RequestedStrategy,
    Worker,
)

GRACE = 5.0


def _job(session: Session) -> int:
    src = repo.create_portal(session, name="src", kind=PortalKind.LOCAL, base_path="/srv/a")
    dst = repo.create_portal(session, name="dst", kind=PortalKind.LOCAL, base_path="/srv/b")
    job = repo.create_job(
        session, mode=JobMode.COPY, source_portal_id=src.id, source_path="x",
        target_portal_id=dst.id, target_path="", requested_strategy=RequestedStrategy.AUTO,
    )
    session.commit()
    return job.id


def _beat(session: Session, worker_id: str, age_s: float = 0.0) -> None:
    repo.heartbeat(session, worker_id=worker_id, pid=1, hostname="h")
    session.execute(
        update(Worker).where(Worker.id == worker_id).values(
            last_heartbeat_at=text(f"now() - interval '{age_s} seconds'")
        )
    )
    session.commit()


def _types(session: Session, job_id: int) -> list[str]:
    return [e.event_type.value for e in repo.list_events(session, job_id=job_id)]


def test_claim_is_exclusive(db_session: Session) -> None:
    job_id = _job(db_session)
    _beat(db_session, "w1")
    _beat(db_session, "w2")
    claim = repo.claim_job(db_session, job_id=job_id, worker_id="w1", grace_s=GRACE)
    db_session.commit()
    assert claim == repo.Claim(attempts=1, previous_worker_id=None)
    assert repo.claim_job(db_session, job_id=job_id, worker_id="w2", grace_s=GRACE) is None
    job = repo.get_job(db_session, job_id=job_id, for_update=True)
    assert job.status is JobStatus.RUNNING and job.worker_id == "w1" and job.started_at


def test_claim_takes_over_only_from_a_dead_worker(db_session: Session) -> None:
    job_id = _job(db_session)
    _beat(db_session, "old", age_s=60)
    repo.claim_job(db_session, job_id=job_id, worker_id="old", grace_s=1000)
    db_session.commit()
    claim = repo.claim_job(db_session, job_id=job_id, worker_id="new", grace_s=GRACE)
    assert claim == repo.Claim(attempts=2, previous_worker_id="old")


def test_cancel_wins_over_a_later_claim(db_session: Session) -> None:
    job_id = _job(db_session)
    job = repo.request_cancel(db_session, job_id=job_id)
    db_session.commit()
    assert job.status is JobStatus.CANCELLED
    assert repo.claim_job(db_session, job_id=job_id, worker_id="w", grace_s=GRACE) is None
    assert _types(db_session, job_id) == ["created", "queued", "cancelled"]


def test_cancel_of_running_job_only_flags_it(db_session: Session) -> None:
    job_id = _job(db_session)
    _beat(db_session, "w")
    repo.claim_job(db_session, job_id=job_id, worker_id="w", grace_s=GRACE)
    job = repo.request_cancel(db_session, job_id=job_id)
    db_session.commit()
    assert job.status is JobStatus.RUNNING and job.cancel_requested
    assert repo.cancel_requested(db_session, job_id=job_id)
    assert repo.finish_job(db_session, job_id=job_id, worker_id="w", status=JobStatus.DONE,
                           event_type=EventType.DONE, message="finished first")
    db_session.commit()
    with pytest.raises(repo.ConflictError, match="already ended DONE"):
        repo.request_cancel(db_session, job_id=job_id)


def test_recovery_spares_live_and_own_workers(db_session: Session) -> None:
    ids = [_job_named(db_session, n) for n in ("live", "dead", "mine", "spent", "cancel")]
    _beat(db_session, "live")
    _beat(db_session, "dead", age_s=60)
    _beat(db_session, "mine", age_s=60)  # e.g. after a Postgres outage
    for job_id, worker in zip(ids, ("live", "dead", "mine", "dead", "dead")):
        assert repo.claim_job(db_session, job_id=job_id, worker_id=worker, grace_s=1000)
    db_session.execute(update(Job).where(Job.id == ids[3]).values(attempts=3))
    db_session.execute(update(Job).where(Job.id == ids[4]).values(cancel_requested=True))
    db_session.commit()

    touched = repo.recover_dead_jobs(db_session, grace_s=GRACE, max_attempts=3,
                                     own_worker_id="mine", own_active={ids[2]})
    db_session.commit()
    assert sorted(touched) == sorted([(ids[1], "dead", True), (ids[3], "dead", False),
                                      (ids[4], "dead", False)])
    status = {i: repo.get_job(db_session, job_id=i, for_update=True).status for i in ids}
    assert status == {ids[0]: JobStatus.RUNNING, ids[1]: JobStatus.PENDING,
                      ids[2]: JobStatus.RUNNING, ids[3]: JobStatus.FAILED,
                      ids[4]: JobStatus.CANCELLED}
    assert _types(db_session, ids[1])[-1] == "recovered"
    assert _types(db_session, ids[3])[-1] == "error"
    failed = repo.get_job(db_session, job_id=ids[3])
    assert failed.error_type == "WorkerLostError" and failed.finished_at is not None


def _job_named(session: Session, name: str) -> int:
    src = repo.create_portal(session, name=f"src-{name}", kind=PortalKind.LOCAL,
                             base_path="/srv/a")
    job = repo.create_job(
        session, mode=JobMode.COPY, source_portal_id=src.id, source_path=name,
        target_portal_id=src.id, target_path="out", requested_strategy=RequestedStrategy.AUTO,
    )
    session.commit()
    return job.id


def test_finish_refused_once_the_job_was_taken_away(db_session: Session) -> None:
    job_id = _job(db_session)
    _beat(db_session, "slow", age_s=60)
    repo.claim_job(db_session, job_id=job_id, worker_id="slow", grace_s=1000)
    repo.recover_dead_jobs(db_session, grace_s=GRACE, max_attempts=3)
    db_session.commit()
    assert not repo.finish_job(db_session, job_id=job_id, worker_id="slow",
                               status=JobStatus.DONE, event_type=EventType.DONE, message="late")
    assert repo.get_job(db_session, job_id=job_id).status is JobStatus.PENDING


def test_own_job_not_running_here_is_recovered(db_session: Session) -> None:
    """A worker that could not record a job's end finds it again on its next round."""
    running, lost = _job_named(db_session, "running"), _job_named(db_session, "lost")
    _beat(db_session, "me")
    for job_id in (running, lost):
        assert repo.claim_job(db_session, job_id=job_id, worker_id="me", grace_s=GRACE)
    db_session.commit()
    touched = repo.recover_dead_jobs(db_session, grace_s=GRACE, max_attempts=3,
                                     own_worker_id="me", own_active={running})
    assert touched == [(lost, "me", True)]
    assert repo.get_job(db_session, job_id=running).status is JobStatus.RUNNING
