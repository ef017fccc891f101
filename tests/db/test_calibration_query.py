"""The threshold-recalibration SQL in docs/data_model.md runs and reads plans correctly."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.orm import Session

from mvp_core.db.models import EventType, Job, JobEvent, JobMode, JobStatus, Portal, PortalKind

DOC = Path(__file__).resolve().parents[2] / "docs" / "data_model.md"
MIB = 1024 * 1024
T0 = datetime(2026, 11, 25, 1, 0, tzinfo=UTC)


def calibration_sql() -> str:
    doc = DOC.read_text()
    section = doc.split("## Recalibrating the planner thresholds", 1)[1]
    match = re.search(r"```sql\n(.*?)```", section, re.DOTALL)
    assert match, "no ```sql block in the recalibration section"
    return match.group(1)


def _job(
    session: Session,
    portal: Portal,
    *,
    strategy: str,
    n_files: int,
    total_bytes: int,
    seconds: float,
    status: JobStatus = JobStatus.DONE,
    use_duration_column: bool = True,
) -> Job:
    job = Job(
        mode=JobMode.COPY,
        source_portal_id=portal.id,
        source_path="s",
        target_portal_id=portal.id,
        target_path="t",
        status=status,
        strategy=strategy,
        n_files=n_files,
        total_bytes=total_bytes,
        started_at=T0,
        finished_at=T0 + timedelta(seconds=seconds),
        duration_s=seconds if use_duration_column else None,
    )
    session.add(job)
    session.flush()
    plan = {
        "strategy": strategy,
        "n_files": n_files,
        "total_bytes": total_bytes,
        "avg_size_bytes": total_bytes // n_files,
        "reason": "test",
    }
    session.add(JobEvent(job_id=job.id, event_type=EventType.PLAN, payload=plan))
    return job


def test_calibration_query_compares_strategies_per_bucket(db_session: Session) -> None:
    portal = Portal(name="lab", kind=PortalKind.LOCAL, base_path="/data")
    db_session.add(portal)
    db_session.flush()

    # A Pro Tools session: 1500 files of 1 MiB. ZIP_FIRST wins (60 vs 20 MiB/s).
    session_bytes = 1500 * MIB
    for seconds in (75.0, 75.0):
        _job(db_session, portal, strategy="DIRECT", n_files=1500, total_bytes=session_bytes,
             seconds=seconds)  # fmt: skip
    _job(db_session, portal, strategy="ZIP_FIRST", n_files=1500, total_bytes=session_bytes,
         seconds=25.0)  # fmt: skip
    _job(db_session, portal, strategy="ZIP_FIRST", n_files=1500, total_bytes=session_bytes,
         seconds=25.0, use_duration_column=False)  # fmt: skip  # from started/finished
    # A failed ZIP_FIRST run must not count, however slow.
    _job(db_session, portal, strategy="ZIP_FIRST", n_files=1500, total_bytes=session_bytes,
         seconds=9999.0, status=JobStatus.FAILED)  # fmt: skip

    # A render: 3 files of 100 MiB. DIRECT wins (100 vs 50 MiB/s).
    _job(db_session, portal, strategy="DIRECT", n_files=3, total_bytes=300 * MIB, seconds=3.0)
    retried = _job(db_session, portal, strategy="DIRECT", n_files=3, total_bytes=300 * MIB,
                   seconds=6.0)  # fmt: skip
    # The retried job planned again; only its last plan counts (ZIP_FIRST, 50 MiB/s).
    db_session.flush()
    db_session.add(
        JobEvent(job_id=retried.id, event_type=EventType.PLAN,
                 payload={"strategy": "ZIP_FIRST", "n_files": 3, "total_bytes": 300 * MIB,
                          "avg_size_bytes": 100 * MIB})
    )  # fmt: skip
    # A remote-source plan knows no counts: ignored.
    remote = _job(db_session, portal, strategy="DIRECT", n_files=1, total_bytes=1, seconds=1.0)
    db_session.execute(
        text("UPDATE job_events SET payload = payload || '{\"n_files\": null}' WHERE job_id = :j"),
        {"j": remote.id},
    )
    db_session.commit()

    rows = [dict(r._mapping) for r in db_session.execute(text(calibration_sql()))]
    by_bucket = {(r["files_from"], r["avg_size_from"]): r for r in rows}
    assert set(by_bucket) == {(1000, 1048576), (0, 67108864)}

    pro_tools = by_bucket[(1000, 1048576)]
    assert (pro_tools["direct_jobs"], pro_tools["zip_first_jobs"]) == (2, 2)
    assert float(pro_tools["direct_mib_s"]) == 20.0
    assert float(pro_tools["zip_first_mib_s"]) == 60.0
    assert pro_tools["faster"] == "ZIP_FIRST"

    render = by_bucket[(0, 67108864)]
    assert (render["direct_jobs"], render["zip_first_jobs"]) == (1, 1)
    assert float(render["direct_mib_s"]) == 100.0
    assert float(render["zip_first_mib_s"]) == 50.0
    assert render["faster"] == "DIRECT"
