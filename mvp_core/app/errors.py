"""One place that turns domain errors into HTTP answers: 404, 409, 422 (never a 500 for bad input)."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError

from mvp_core.app.limits import clip_input
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


class SafeJSONResponse(JSONResponse):
    """JSON with ``\\u`` escapes: an error that echoes hostile input (a lone surrogate)
    must still render, or bad input would become a 500."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False,
                          separators=(",", ":")).encode("ascii")


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = []
    for error in errors:
        error = dict(error)
        if "input" in error:
            error["input"] = clip_input(error["input"])
        if len(repr(error.get("ctx"))) > 500:
            error.pop("ctx")
        detail.append(error)
    return SafeJSONResponse({"detail": jsonable_encoder(detail)}, status_code=422)


# Request fields an error message may open with ("target_path must not contain '..'").
_FIELDS = ("source_path", "target_path", "source_portal_id", "target_portal_id", "base_path",
           "notify_url", "on_existing")


def _field(exc: Exception) -> str | None:
    """The request field a 422 is about: named by the error, or opening its message."""
    named = getattr(exc, "field", None)
    if named:
        return str(named)
    first = str(exc).split(" ", 1)[0]
    return first if first in _FIELDS else None


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    for cls, code in _STATUS:
        if isinstance(exc, cls):
            if code == 422:  # the same shape as FastAPI's own 422s: one shape for clients
                loc = ["body", *([_field(exc)] if _field(exc) else [])]
                detail: Any = [{"loc": loc, "msg": str(exc), "type": "invalid_request"}]
            else:
                detail = str(exc)
            return SafeJSONResponse({"detail": detail}, status_code=code)
    return SafeJSONResponse({"detail": "internal error"}, status_code=500)  # pragma: no cover


async def _db_error(request: Request, exc: Exception) -> JSONResponse:
    error = exc if isinstance(exc, KetterDbError) else translate_db_error(exc)
    if error.status_code >= 500:
        log.warning("database error on %s %s: %s", request.method, request.url.path, error)
    detail: Any = error.message
    if error.status_code == 422:
        detail = [{"loc": ["body"], "msg": error.message, "type": error.code}]
    return SafeJSONResponse({"detail": detail}, status_code=error.status_code)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    for cls, _ in _STATUS:
        app.add_exception_handler(cls, _domain_error)
    app.add_exception_handler(KetterDbError, _db_error)
    app.add_exception_handler(DBAPIError, _db_error)
