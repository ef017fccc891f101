"""Dependencies every route shares: settings, a DB session, the queue, the API token."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from arq.connections import ArqRedis
from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from mvp_core.app.resources import Resources
from mvp_core.config import Settings, get_settings

MAX_ID = 2**31 - 1  # Postgres integer: larger ids cannot exist, refuse them before SQL

SettingsDep = Annotated[Settings, Depends(get_settings)]


def _resources(request: Request) -> Resources:
    return request.app.state.resources  # type: ignore[no-any-return]


def get_db(request: Request, settings: SettingsDep) -> Iterator[Session]:
    """One session per request; routes commit, anything uncommitted is rolled back."""
    session = _resources(request).session_factory(settings.database_url)()
    try:
        yield session
    finally:
        session.close()


def get_queue(request: Request, settings: SettingsDep) -> ArqRedis:
    return _resources(request).queue(settings.redis_url, settings.queue_name)


SessionDep = Annotated[Session, Depends(get_db)]
QueueDep = Annotated[ArqRedis, Depends(get_queue)]
PortalId = Annotated[int, Path(ge=1, le=MAX_ID)]
JobId = Annotated[int, Path(ge=1, le=MAX_ID)]

_bearer = HTTPBearer(auto_error=False, description="KETTER_API_TOKEN, when the server sets one")


def require_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """When ``KETTER_API_TOKEN`` is set, demand ``Authorization: Bearer <token>`` (constant time)."""
    expected = settings.api_token
    if expected is None:
        return
    given = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong API token",
            headers={"WWW-Authenticate": "Bearer"},
        )
