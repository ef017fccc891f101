"""Portals: where files live. Deleting one that jobs refer to is refused (409)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from mvp_core.app.deps import PortalId, SessionDep
from mvp_core.app.schemas import PortalCreate, PortalOut, error_responses
from mvp_core.db import repository as repo

router = APIRouter(prefix="/portals", tags=["portals"], responses=error_responses(401, 503))


@router.post("", status_code=status.HTTP_201_CREATED, responses=error_responses(400, 409))
def create_portal(body: PortalCreate, response: Response, session: SessionDep) -> PortalOut:
    portal = repo.create_portal(session, **body.model_dump())
    session.commit()
    response.headers["Location"] = f"/portals/{portal.id}"
    return PortalOut.model_validate(portal)


@router.get("")
def list_portals(
    session: SessionDep, include_dku: Annotated[bool, Query()] = False
) -> list[PortalOut]:
    """Every portal but the DKU's smoke portals (``include_dku=true`` lists them too)."""
    portals = repo.list_portals(session, include_dku=include_dku)
    return [PortalOut.model_validate(p) for p in portals]


@router.get("/{portal_id}", responses=error_responses(404))
def get_portal(portal_id: PortalId, session: SessionDep) -> PortalOut:
    return PortalOut.model_validate(repo.get_portal(session, portal_id=portal_id))


@router.delete("/{portal_id}", status_code=status.HTTP_204_NO_CONTENT,
               responses=error_responses(404, 409))
def delete_portal(portal_id: PortalId, session: SessionDep) -> Response:
    repo.delete_portal(session, portal_id=portal_id)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
