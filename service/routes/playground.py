"""The playground page (``MFDV_UI``, on by default): ``/`` redirects to ``/ui/``.

``service/static/`` holds plain HTML, CSS and JavaScript, no build step and no external
assets. The page calls only the public API (``/v1/models``, ``/v1/predict``,
``/v1/attack-probe``) with URLs relative to itself, so it also works behind a path prefix;
it sends ``X-API-Key`` when the user enters one. Not part of the OpenAPI document.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> RedirectResponse:
    return RedirectResponse("ui/", status_code=307)  # relative: keeps a proxy's path prefix


def install_playground(app: FastAPI) -> None:
    """Serve the page: the redirect at ``/`` and the static files under ``/ui/``."""
    app.include_router(router)
    app.mount("/ui", StaticFiles(directory=STATIC_DIR, html=True), name="ui")
