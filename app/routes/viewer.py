"""The browser viewer: ``/`` and its static files (plain HTML, JS and CSS from app/static, no build step).

The page holds no data and needs no API key (app.middleware lets ``/`` and ``/static/`` through); it asks
for the key and sends it with each API call it makes.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

# same-origin scripts, styles and API calls only; images from blob: URLs the page makes from local files
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # revalidate (ETag) on each visit, so that a new release of the page is never mixed with a cached script
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)
# StaticFiles refuses paths outside the directory, answers HEAD and If-None-Match; its 404 becomes error JSON
_files = StaticFiles(directory=STATIC_DIR, follow_symlink=False)


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_HEADERS)


@router.api_route("/static/{path:path}", methods=["GET", "HEAD"])
async def static(path: str, request: Request) -> Response:
    response = await _files.get_response(path, request.scope)
    response.headers.update(_HEADERS)
    return response
