"""One place that turns domain errors into HTTP answers: 404, 409, 422 (never a 500 for bad input)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError

from mvp_core.db.errors import KetterDbError, translate_db_error
from mvp_core.db.repository import ConflictError, InvalidRequestError, NotFoundError
from mvp_core.transfer_engine.errors import InvalidEndpointError

log = logging.getLogger(__name__)

_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (NotFoundError, 404),
    (ConflictError, 409),
    (InvalidRequestError, 422),
    (InvalidEndpointError, 422),
)


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    for cls, code in _STATUS:
        if isinstance(exc, cls):
            return JSONResponse({"detail": str(exc)}, status_code=code)
    return JSONResponse({"detail": "internal error"}, status_code=500)  # pragma: no cover


async def _db_error(request: Request, exc: Exception) -> JSONResponse:
    error = exc if isinstance(exc, KetterDbError) else translate_db_error(exc)
    if error.status_code >= 500:
        log.warning("database error on %s %s: %s", request.method, request.url.path, error)
    return JSONResponse(
        {"detail": error.message, "code": error.code}, status_code=error.status_code
    )


def install_error_handlers(app: FastAPI) -> None:
    for cls, _ in _STATUS:
        app.add_exception_handler(cls, _domain_error)
    app.add_exception_handler(KetterDbError, _db_error)
    app.add_exception_handler(DBAPIError, _db_error)
