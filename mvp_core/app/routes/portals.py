"""Portals: where files live. Removing one that unfinished jobs use is refused (409);
one that only ended jobs name is hidden but kept for their history."""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from mvp_core.app.deps import PortalId, SessionDep
from mvp_core.app.schemas import PortalCreate, PortalOut, PortalUpdate, error_responses
from mvp_core.db import repository as repo
from mvp_core.db.models import Portal, PortalKind

router = APIRouter(prefix="/portals", tags=["portals"], responses=error_responses(401, 503))

_FIELDS = tuple(PortalCreate.model_fields)


def _out(portal: Portal) -> PortalOut:
    """The portal, with a warning for what this host can see is wrong (the API runs
    beside the workers in every deployment we ship, so a missing local base matters)."""
    out = PortalOut.model_validate(portal)
    # A site's portal is on that LAB host's disk, which this host need not see.
    if (portal.kind is PortalKind.LOCAL and portal.site is None
            and not os.path.isdir(portal.base_path)):
        out.warnings.append(f"base_path {portal.base_path!r} is not a directory on this host")
    return out


@router.post("", status_code=status.HTTP_201_CREATED, responses=error_responses(400, 409))
def create_portal(body: PortalCreate, response: Response, session: SessionDep) -> PortalOut:
    portal = repo.create_portal(session, **body.model_dump())
    session.commit()
    response.headers["Location"] = f"/portals/{portal.id}"
    return _out(portal)


@router.get("")
def list_portals(
    session: SessionDep, include_dku: Annotated[bool, Query()] = False
) -> list[PortalOut]:
    """Every portal but the DKU's smoke portals (``include_dku=true`` lists them too)."""
    portals = repo.list_portals(session, include_dku=include_dku)
    return [PortalOut.model_validate(p) for p in portals]


@router.get("/{portal_id}", responses=error_responses(404))
def get_portal(portal_id: PortalId, session: SessionDep) -> PortalOut:
    return _out(repo.get_portal(session, portal_id=portal_id))


@router.patch("/{portal_id}", responses=error_responses(400, 404, 409))
def update_portal(portal_id: PortalId, body: PortalUpdate, session: SessionDep) -> PortalOut:
    """Change some fields; the portal they make must pass the creation rules (422 names
    the field). Switching kind to local clears the ssh fields unless they are given."""
    portal = repo.get_portal(session, portal_id=portal_id)
    changes = body.model_dump(exclude_unset=True)
    merged = {name: getattr(portal, name) for name in _FIELDS}
    if changes.get("kind") is PortalKind.LOCAL:
        merged.update(host=None, port=None, username=None, identity_file=None,
                      known_hosts_file=None, rsync_path=None)
    merged.update(changes)
    try:
        valid = PortalCreate.model_validate(merged)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
    updated = repo.update_portal(session, portal_id=portal_id, values=valid.model_dump())
    session.commit()
    return _out(updated)


@router.delete("/{portal_id}", status_code=status.HTTP_204_NO_CONTENT,
               responses=error_responses(404, 409))
def delete_portal(portal_id: PortalId, session: SessionDep) -> Response:
    repo.delete_portal(session, portal_id=portal_id)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
