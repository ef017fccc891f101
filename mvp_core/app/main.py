"""The FastAPI app: ``uvicorn mvp_core.app.main:app`` (settings: ``mvp_core.config``).

``create_app(settings)`` builds an app bound to explicit settings (tests, embedding);
routes read settings only through the ``get_settings`` dependency.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from mvp_core.app.deps import require_token
from mvp_core.app.errors import install_error_handlers
from mvp_core.app.limits import BodyLimit
from mvp_core.app.resources import Resources
from mvp_core.app.routes import health, jobs, portals
from mvp_core.config import Settings, get_settings


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Bad settings (an unreadable KETTER_ENV_FILE, a bad value) stop the start-up,
    # not every later request with a 500.
    app.dependency_overrides.get(get_settings, get_settings)()
    try:
        yield
    finally:
        await app.state.resources.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    """A Ketter API; with ``settings`` it ignores the environment."""
    app = FastAPI(
        title="Ketter",
        version="3.0.0",
        summary="Reliable folder transfers for post-production studios",
        lifespan=_lifespan,
    )
    app.state.resources = Resources()
    if settings is not None:
        app.dependency_overrides[get_settings] = lambda: settings
    app.add_middleware(BodyLimit)  # outermost: before parsing and before the token check
    install_error_handlers(app)
    app.include_router(health.router)
    guarded = [Depends(require_token)]
    app.include_router(portals.router, dependencies=guarded)
    app.include_router(jobs.router, dependencies=guarded)
    return app


app = create_app()
