"""Bad input reaches the real Postgres and comes back as a clear domain error."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest
from sqlalchemy import CheckConstraint, Enum, text
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from mvp_core.db import errors
from mvp_core.db.errors import (
    ConstraintViolationError,
    DatabaseUnavailableError,
    DuplicateError,
    DuplicatePortalNameError,
    InvalidDataError,
    InvalidEnumValueError,
    KetterDbError,
    NegativeCounterError,
    NotNullViolationError,
    UnknownJobError,
    UnknownPortalError,
    translate_db_error,
    translated_db_errors,
)
from mvp_core.db.models import NAMING, Base, Job, JobEvent, Portal, PortalKind, Worker

MakePortal = Callable[..., Portal]
MakeJob = Callable[..., Job]


def _refused(session: Session, expected: type[KetterDbError]) -> KetterDbError:
    """Flush, expect the DB to refuse, and return the translated error."""
    with pytest.raises(expected) as caught, translated_db_errors():
        session.flush()
    session.rollback()
    assert isinstance(caught.value.__cause__, IntegrityError | DataError)
    return caught.value


def _refused_sql(session: Session, sql: str, expected: type[KetterDbError]) -> KetterDbError:
    with pytest.raises(expected) as caught, translated_db_errors():
        session.execute(text(sql))
    session.rollback()
    return caught.value


def test_duplicate_portal_name(db_session: Session, make_portal: MakePortal) -> None:
    make_portal("lab")
    db_session.commit()
    db_session.add(Portal(name="lab", kind=PortalKind.LOCAL, base_path="/other"))
    error = _refused(db_session, DuplicatePortalNameError)
    assert isinstance(error, DuplicateError)
    assert error.constraint == "uq_portals_live_name"
    assert error.status_code == 409
    assert "already exists" in str(error) and "(name)=(lab)" in str(error)
    assert db_session.query(Portal).count() == 1  # the first one survived the rollback


def test_unknown_portal_on_a_job(db_session: Session, make_portal: MakePortal) -> None:
    real = make_portal("lab")
    db_session.add(
        Job(mode="copy", source_portal_id=real.id, source_path="a",
            target_portal_id=real.id + 999, target_path="b")
    )  # fmt: skip
    error = _refused(db_session, UnknownPortalError)
    assert error.constraint == "fk_jobs_target_portal_id_portals"
    assert (error.table, error.column) == ("jobs", "target_portal_id")
    assert error.status_code == 422
    assert str(error).startswith("unknown portal")


def test_unknown_job_on_an_event(db_session: Session) -> None:
    db_session.add(JobEvent(job_id=4242, event_type="created"))
    error = _refused(db_session, UnknownJobError)
    assert error.constraint == "fk_job_events_job_id_jobs"


@pytest.mark.parametrize(
    "counter",
    ["n_files", "total_bytes", "files_copied", "bytes_copied", "progress_bytes", "attempts"],
)
def test_negative_counters_refused(db_session: Session, make_job: MakeJob, counter: str) -> None:
    job = make_job()
    db_session.commit()
    setattr(job, counter, -1)
    error = _refused(db_session, NegativeCounterError)
    assert isinstance(error, ConstraintViolationError)
    assert error.constraint == "ck_jobs_counters_non_negative"
    assert "must not be negative" in str(error)
    assert error.as_dict()["code"] == "negative_counter"


def test_finished_before_started_refused(db_session: Session, make_job: MakeJob) -> None:
    started = datetime(2026, 11, 25, 1, 0, tzinfo=UTC)
    job = make_job(started_at=started)
    job.finished_at = started - timedelta(seconds=1)
    error = _refused(db_session, ConstraintViolationError)
    assert error.constraint == "ck_jobs_finished_after_started"
    assert "finished_at must not be earlier than started_at" in str(error)


def test_finished_equal_to_started_is_fine(db_session: Session, make_job: MakeJob) -> None:
    moment = datetime(2026, 11, 25, 1, 0, tzinfo=UTC)
    job = make_job(started_at=moment, finished_at=moment)
    db_session.commit()
    assert job.finished_at == job.started_at


def test_bad_enum_value_through_raw_sql(db_session: Session, make_portal: MakePortal) -> None:
    portal = make_portal("lab")
    error = _refused_sql(
        db_session,
        "INSERT INTO jobs (mode, source_portal_id, source_path, target_portal_id, target_path) "
        f"VALUES ('teleport', {portal.id}, 'a', {portal.id}, 'b')",
        InvalidEnumValueError,
    )
    assert error.constraint == "ck_jobs_job_mode"
    assert (error.table, error.column) == ("jobs", "mode")
    assert "must be one of copy, move" in str(error)


@pytest.mark.parametrize(
    ("column", "constraint"),
    [("status", "ck_jobs_job_status"), ("requested_strategy", "ck_jobs_requested_strategy"),
     ("strategy", "ck_jobs_strategy")],
)  # fmt: skip
def test_every_job_enum_is_checked_by_the_db(
    db_session: Session, make_job: MakeJob, column: str, constraint: str
) -> None:
    job = make_job()
    error = _refused_sql(
        db_session, f"UPDATE jobs SET {column} = 'bogus' WHERE id = {job.id}", InvalidEnumValueError
    )
    assert error.constraint == constraint
    assert error.column == column


def test_ssh_portal_without_host(db_session: Session) -> None:
    db_session.add(Portal(name="srvtrf", kind=PortalKind.SSH, base_path="/srv/trf"))
    error = _refused(db_session, ConstraintViolationError)
    assert error.constraint == "ck_portals_ssh_needs_host"
    assert "an ssh portal needs a host" in str(error)


@pytest.mark.parametrize(
    ("fields", "constraint"),
    [({"base_path": "relative/path"}, "ck_portals_base_path_absolute"),
     ({"name": ""}, "ck_portals_name_not_empty"),
     ({"port": 70000}, "ck_portals_port_range")],
)  # fmt: skip
def test_other_portal_checks(
    db_session: Session, fields: dict[str, object], constraint: str
) -> None:
    db_session.add(Portal(**{"name": "p", "kind": PortalKind.LOCAL, "base_path": "/x", **fields}))
    error = _refused(db_session, ConstraintViolationError)
    assert error.constraint == constraint


def test_event_payload_must_be_an_object(db_session: Session, make_job: MakeJob) -> None:
    job = make_job()
    error = _refused_sql(
        db_session,
        f"INSERT INTO job_events (job_id, event_type, payload) VALUES ({job.id}, 'plan', '[1, 2]')",
        ConstraintViolationError,
    )
    assert error.constraint == "ck_job_events_payload_is_object"


def test_missing_required_value(db_session: Session, make_portal: MakePortal) -> None:
    portal = make_portal("lab")
    error = _refused_sql(
        db_session,
        "INSERT INTO jobs (mode, source_portal_id, target_portal_id, target_path) "
        f"VALUES ('copy', {portal.id}, {portal.id}, 'b')",
        NotNullViolationError,
    )
    assert (error.table, error.column) == ("jobs", "source_path")


def test_too_long_and_out_of_range_are_invalid_data(db_session: Session) -> None:
    db_session.add(Portal(name="x" * 101, kind=PortalKind.LOCAL, base_path="/x"))
    error = _refused(db_session, InvalidDataError)
    assert "too long" in str(error)
    assert error.status_code == 422

    db_session.add(Worker(id="w1", hostname="lab", pid=2**40))
    error = _refused(db_session, InvalidDataError)
    assert "out of range" in str(error)


def test_duplicate_primary_key_is_a_generic_duplicate(db_session: Session) -> None:
    db_session.execute(text("INSERT INTO workers (id, hostname, pid) VALUES ('w1', 'lab', 1)"))
    error = _refused_sql(
        db_session,
        "INSERT INTO workers (id, hostname, pid) VALUES ('w1', 'lab', 2)",
        DuplicateError,
    )
    assert type(error) is DuplicateError
    assert error.constraint == "pk_workers"
    assert "workers.id" in str(error)


def test_server_defaults_fill_a_minimal_raw_insert(
    db_session: Session, make_portal: MakePortal
) -> None:
    portal = make_portal("lab")
    row = db_session.execute(
        text(
            "INSERT INTO jobs (mode, source_portal_id, source_path, target_portal_id, target_path) "
            f"VALUES ('copy', {portal.id}, 'a', {portal.id}, 'b') "
            "RETURNING status, requested_strategy, n_files, attempts, cancel_requested"
        )
    ).one()
    assert tuple(row) == ("PENDING", "auto", 0, 0, False)


def test_unreachable_database_is_transient(database_url: str) -> None:
    from sqlalchemy import create_engine, make_url, pool

    dead = make_url(database_url).set(port=1).render_as_string(hide_password=False)
    engine = create_engine(dead, poolclass=pool.NullPool, connect_args={"connect_timeout": 2})
    try:
        with pytest.raises(DatabaseUnavailableError) as caught, translated_db_errors():
            engine.connect()
    finally:
        engine.dispose()
    assert caught.value.transient
    assert isinstance(caught.value.__cause__, OperationalError)


def test_raw_psycopg2_errors_translate_too(database_url: str) -> None:
    from sqlalchemy import make_url

    url = make_url(database_url)
    conn = psycopg2.connect(host=url.host, port=url.port, user=url.username, dbname=url.database)
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO workers (id, hostname, pid) VALUES ('w', 'h', 1)")
            with pytest.raises(psycopg2.IntegrityError) as caught:
                cur.execute("INSERT INTO workers (id, hostname, pid) VALUES ('w', 'h', 1)")
        conn.rollback()
    finally:
        conn.close()
    assert isinstance(translate_db_error(caught.value), DuplicateError)


def test_every_named_check_has_a_message_or_is_an_enum() -> None:
    """A new CHECK in the models must get a readable message in errors.py."""
    for table in Base.metadata.tables.values():
        enum_checks = {
            NAMING["ck"] % {"table_name": table.name, "constraint_name": c.type.name}
            for c in table.columns
            if isinstance(c.type, Enum)
        }
        for constraint in table.constraints:
            if isinstance(constraint, CheckConstraint):
                name = str(constraint.name)
                assert name in enum_checks or name in errors._CHECK_MESSAGES, name


def test_connection_killed_mid_session_is_transient(database_url: str) -> None:
    """What a worker sees when Postgres restarts under it: retry later, not a crash."""
    from sqlalchemy import create_engine, pool

    engine = create_engine(database_url, poolclass=pool.NullPool)
    admin = create_engine(database_url, poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            with admin.connect() as other:
                other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            with pytest.raises(DatabaseUnavailableError) as caught, translated_db_errors():
                conn.execute(text("SELECT 1"))
    finally:
        engine.dispose()
        admin.dispose()
    assert caught.value.transient
    assert caught.value.status_code == 503
