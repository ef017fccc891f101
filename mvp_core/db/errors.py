"""What the database refused, as domain errors the API and the worker can act on.

The database enforces the rules (unique names, foreign keys, CHECKs); this module
turns its refusals into one tree rooted at ``KetterDbError``::

    KetterDbError
    ├── DuplicateError               unique violation                      (409)
    │   └── DuplicatePortalNameError   portals.name already taken
    ├── ForeignKeyViolationError
    │   ├── MissingReferenceError    row points at nothing                  (422)
    │   │   ├── UnknownPortalError     job names a portal that does not exist
    │   │   └── UnknownJobError        event names a job that does not exist
    │   └── StillReferencedError     delete refused (ON DELETE RESTRICT)    (409)
    │       └── PortalInUseError       jobs still use the portal
    ├── ConstraintViolationError     a CHECK failed; names the constraint   (422)
    │   ├── InvalidEnumValueError      value not among the allowed ones
    │   └── NegativeCounterError       a counter below zero
    ├── NotNullViolationError        a required column is missing           (422)
    ├── InvalidDataError             too long, out of range, bad syntax     (422)
    ├── TransactionConflictError     serialization failure, deadlock, lock  (transient)
    └── DatabaseUnavailableError     cannot reach Postgres                  (transient)

Use at the boundary, after rolling back the session::

    try:
        session.commit()
    except DBAPIError as exc:
        session.rollback()
        raise translate_db_error(exc) from exc

Messages hold Postgres' own words and the constraint name, never the SQL
parameters (SQLAlchemy's ``str(exc)`` prints them; we do not).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg2
from sqlalchemy import Enum, ForeignKeyConstraint, PrimaryKeyConstraint, UniqueConstraint
from sqlalchemy.exc import DBAPIError

from mvp_core.db.models import NAMING, Base

# Postgres SQLSTATE codes (Appendix A of the Postgres manual).
UNIQUE_VIOLATION = "23505"
FOREIGN_KEY_VIOLATION = "23503"
CHECK_VIOLATION = "23514"
NOT_NULL_VIOLATION = "23502"
TRANSIENT_CODES = frozenset({"40001", "40P01", "55P03"})  # serialization, deadlock, lock n/a


class KetterDbError(Exception):
    """Base of every translated database error."""

    code: str = "db_error"
    status_code: int = 500  # a hint for the API; the worker ignores it
    transient: bool = False

    def __init__(
        self,
        message: str,
        *,
        constraint: str | None = None,
        table: str | None = None,
        column: str | None = None,
        detail: str | None = None,
        pgcode: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.constraint = constraint
        self.table = table
        self.column = column
        self.detail = detail
        self.pgcode = pgcode

    def __str__(self) -> str:
        return self.message

    def as_dict(self) -> dict[str, object]:
        """JSON-ready, for an API error body or a job event."""
        return {
            "error_type": type(self).__name__,
            "code": self.code,
            "message": self.message,
            "constraint": self.constraint,
            "table": self.table,
            "column": self.column,
            "transient": self.transient,
        }


class DuplicateError(KetterDbError):
    code = "duplicate"
    status_code = 409


class DuplicatePortalNameError(DuplicateError):
    code = "duplicate_portal_name"


class ForeignKeyViolationError(KetterDbError):
    code = "foreign_key_violation"
    status_code = 422


class MissingReferenceError(ForeignKeyViolationError):
    code = "missing_reference"


class UnknownPortalError(MissingReferenceError):
    code = "unknown_portal"


class UnknownJobError(MissingReferenceError):
    code = "unknown_job"


class StillReferencedError(ForeignKeyViolationError):
    code = "still_referenced"
    status_code = 409


class PortalInUseError(StillReferencedError):
    code = "portal_in_use"


class ConstraintViolationError(KetterDbError):
    code = "constraint_violation"
    status_code = 422


class InvalidEnumValueError(ConstraintViolationError):
    code = "invalid_value"


class NegativeCounterError(ConstraintViolationError):
    code = "negative_counter"


class NotNullViolationError(KetterDbError):
    code = "missing_value"
    status_code = 422


class InvalidDataError(KetterDbError):
    code = "invalid_data"
    status_code = 422


class TransactionConflictError(KetterDbError):
    code = "transaction_conflict"
    status_code = 503
    transient = True


class DatabaseUnavailableError(KetterDbError):
    code = "database_unavailable"
    status_code = 503
    transient = True


# --- what each named constraint means, read from the models' metadata -------------


@dataclass(frozen=True)
class _ForeignKey:
    table: str
    column: str
    referred_table: str


@dataclass(frozen=True)
class _EnumCheck:
    table: str
    column: str
    allowed: tuple[str, ...]


_CHECK_MESSAGES: dict[str, str] = {
    "ck_portals_ssh_needs_host": "an ssh portal needs a host",
    "ck_portals_port_range": "port must be between 1 and 65535",
    "ck_portals_base_path_absolute": "base_path must be an absolute path (start with /)",
    "ck_portals_name_not_empty": "portal name must not be empty",
    "ck_portals_rsync_path_absolute": "rsync_path must be an absolute path (start with /)",
    "ck_portals_max_concurrent_jobs_positive": "max_concurrent_jobs must be at least 1",
    "ck_jobs_counters_non_negative": "job counters (files, bytes, progress, attempts) "
    "must not be negative",
    "ck_jobs_finished_after_started": "finished_at must not be earlier than started_at",
    "ck_job_events_payload_is_object": "an event payload must be a JSON object",
    "ck_job_files_size_non_negative": "a manifest file size must not be negative",
    "ck_installation_single_row": "there is one installation row",
}

_SPECIFIC_CHECKS: dict[str, type[ConstraintViolationError]] = {
    "ck_jobs_counters_non_negative": NegativeCounterError,
}

_UNIQUE_ERRORS: dict[str, type[DuplicateError]] = {
    "uq_portals_live_name": DuplicatePortalNameError,
}

_MISSING_BY_TABLE: dict[str, type[MissingReferenceError]] = {
    "portals": UnknownPortalError,
    "jobs": UnknownJobError,
}

_IN_USE_BY_TABLE: dict[str, type[StillReferencedError]] = {
    "portals": PortalInUseError,
}


def _index_constraints() -> tuple[
    dict[str, _ForeignKey], dict[str, _EnumCheck], dict[str, tuple[str, tuple[str, ...]]]
]:
    foreign: dict[str, _ForeignKey] = {}
    enums: dict[str, _EnumCheck] = {}
    uniques: dict[str, tuple[str, tuple[str, ...]]] = {}
    for table in Base.metadata.tables.values():
        for constraint in table.constraints:
            if isinstance(constraint, ForeignKeyConstraint) and constraint.name:
                element = constraint.elements[0]
                foreign[str(constraint.name)] = _ForeignKey(
                    table.name, element.parent.name, element.column.table.name
                )
            elif (
                isinstance(constraint, UniqueConstraint | PrimaryKeyConstraint) and constraint.name
            ):
                uniques[str(constraint.name)] = (table.name, tuple(constraint.columns.keys()))
        for column in table.columns:
            if isinstance(column.type, Enum) and column.type.name:
                name = NAMING["ck"] % {
                    "table_name": table.name,
                    "constraint_name": column.type.name,
                }
                enums[name] = _EnumCheck(table.name, column.name, tuple(column.type.enums))
    return foreign, enums, uniques


_FOREIGN_KEYS, _ENUM_CHECKS, _UNIQUES = _index_constraints()

_WRITES_TABLE = re.compile(r'^\s*(?:DELETE\s+FROM|UPDATE)\s+"?(\w+)"?', re.IGNORECASE)


# --- translation -------------------------------------------------------------------


def translate_db_error(exc: BaseException) -> KetterDbError:
    """The domain error for ``exc`` (a SQLAlchemy DBAPIError, or a psycopg2 error).

    Never raises; anything it does not recognise becomes a plain ``KetterDbError``
    that still carries Postgres' message and SQLSTATE.
    """
    orig: BaseException = (exc.orig or exc) if isinstance(exc, DBAPIError) else exc
    statement = exc.statement if isinstance(exc, DBAPIError) else None
    pgcode: str | None = getattr(orig, "pgcode", None)
    diag = getattr(orig, "diag", None)
    constraint = getattr(diag, "constraint_name", None)
    table = getattr(diag, "table_name", None)
    column = getattr(diag, "column_name", None)
    primary = getattr(diag, "message_primary", None) or _first_line(orig)
    detail = getattr(diag, "message_detail", None)
    where = {"constraint": constraint, "table": table, "column": column, "pgcode": pgcode}

    if pgcode == UNIQUE_VIOLATION:
        return _unique(constraint, primary, detail, where)
    if pgcode == FOREIGN_KEY_VIOLATION:
        return _foreign_key(constraint, primary, detail, statement, where)
    if pgcode == CHECK_VIOLATION:
        return _check(constraint, primary, where)
    if pgcode == NOT_NULL_VIOLATION:
        return NotNullViolationError(f"{table}.{column} is required: {primary}", **where)
    if pgcode is not None and pgcode.startswith("22"):
        message = f"invalid data: {primary}" + (f" ({detail})" if detail else "")
        return InvalidDataError(message, **where)
    if pgcode in TRANSIENT_CODES:
        return TransactionConflictError(f"transaction conflict, try again: {primary}", **where)
    # No SQLSTATE on an OperationalError: libpq lost or never had the connection.
    lost = isinstance(orig, psycopg2.OperationalError) and pgcode is None
    if lost or (pgcode or "").startswith(("08", "57P")):
        return DatabaseUnavailableError(f"database unavailable: {primary}", **where)
    return KetterDbError(f"database error: {primary}", detail=detail, **where)


@contextmanager
def translated_db_errors() -> Iterator[None]:
    """Re-raise a DBAPIError in the block as its domain error (``from`` the original).

    The caller still owns the session and must roll it back.
    """
    try:
        yield
    except DBAPIError as exc:
        raise translate_db_error(exc) from exc


def _unique(
    constraint: str | None, primary: str, detail: str | None, where: dict[str, str | None]
) -> DuplicateError:
    cls = _UNIQUE_ERRORS.get(constraint or "", DuplicateError)
    table, columns = _UNIQUES.get(constraint or "", (where["table"], ()))
    if cls is DuplicatePortalNameError:
        message = "a portal with this name already exists"
    else:
        what = f"{table}.{','.join(columns)}" if columns else f"constraint {constraint}"
        message = f"duplicate value for {what}"
    if detail:
        message += f": {detail}"
    return cls(message, detail=detail, **{**where, "column": ",".join(columns) or None})


def _foreign_key(
    constraint: str | None,
    primary: str,
    detail: str | None,
    statement: str | None,
    where: dict[str, str | None],
) -> ForeignKeyViolationError:
    fk = _FOREIGN_KEYS.get(constraint or "")
    if fk is None:
        return ForeignKeyViolationError(f"{primary}", detail=detail, **where)
    written = _WRITES_TABLE.match(statement or "")
    refused_delete = primary.startswith("update or delete on table") or (
        written is not None and written.group(1) == fk.referred_table != fk.table
    )
    located = {**where, "table": fk.table, "column": fk.column}
    if refused_delete:
        in_use = _IN_USE_BY_TABLE.get(fk.referred_table, StillReferencedError)
        noun = fk.referred_table.rstrip("s")
        return in_use(
            f"{noun} is still used by {fk.table} ({fk.column}); "
            f"delete or reassign those first (constraint {constraint})",
            detail=detail,
            **located,
        )
    missing = _MISSING_BY_TABLE.get(fk.referred_table, MissingReferenceError)
    noun = fk.referred_table.rstrip("s")
    return missing(
        f"unknown {noun}: {fk.table}.{fk.column} refers to a {noun} that does not exist"
        + (f" ({detail})" if detail else ""),
        detail=detail,
        **located,
    )


def _check(
    constraint: str | None, primary: str, where: dict[str, str | None]
) -> ConstraintViolationError:
    name = constraint or ""
    enum = _ENUM_CHECKS.get(name)
    if enum is not None:
        return InvalidEnumValueError(
            f"{enum.table}.{enum.column} must be one of {', '.join(enum.allowed)} "
            f"(constraint {name})",
            **{**where, "table": enum.table, "column": enum.column},
        )
    cls = _SPECIFIC_CHECKS.get(name, ConstraintViolationError)
    reason = _CHECK_MESSAGES.get(name, primary)
    return cls(f"{reason} (constraint {name})", **where)


def _first_line(orig: BaseException) -> str:
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


__all__ = [
    "ConstraintViolationError",
    "DatabaseUnavailableError",
    "DuplicateError",
    "DuplicatePortalNameError",
    "ForeignKeyViolationError",
    "InvalidDataError",
    "InvalidEnumValueError",
    "KetterDbError",
    "MissingReferenceError",
    "NegativeCounterError",
    "NotNullViolationError",
    "PortalInUseError",
    "StillReferencedError",
    "TransactionConflictError",
    "UnknownJobError",
    "UnknownPortalError",
    "translate_db_error",
    "translated_db_errors",
]
