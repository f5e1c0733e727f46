"""``/docs``: Swagger UI from pinned local files (the ``swagger-ui-bundle`` wheel), never a CDN.

The page works offline (hospital networks often are) and loads no third-party script; the assets are the
exact release the wheel pins, served under ``/docs/assets/`` (public, like the page: they hold no data).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

ASSETS = Path(swagger_ui_path)
PREFIX = "/docs/assets/"

router = APIRouter(include_in_schema=False)
_files = StaticFiles(directory=ASSETS, follow_symlink=False)


@router.get("/docs")
async def docs(request: Request) -> Response:
    return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{request.app.title} API",
                               swagger_js_url=PREFIX + "swagger-ui-bundle.js",
                               swagger_css_url=PREFIX + "swagger-ui.css",
                               swagger_favicon_url=PREFIX + "favicon-32x32.png",
                               oauth2_redirect_url="/docs/oauth2-redirect")


@router.get("/docs/oauth2-redirect")
async def oauth2_redirect() -> Response:
    return get_swagger_ui_oauth2_redirect_html()


@router.api_route("/docs/assets/{path:path}", methods=["GET", "HEAD"])
async def assets(path: str, request: Request) -> Response:
    response = await _files.get_response(path, request.scope)
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response
