"""The inspection page: GET / and its static files (service/static/), served by the app itself.

No build step and nothing from a CDN: the page must work on an offline factory network. Its Content-Security-Policy
only lets it load and call this server (plus data:/blob: URLs for the pictures it draws), so a stray external
reference fails in the browser instead of silently needing the internet.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

STATIC_DIR = Path(__file__).with_name("static")
PAGE_FILE = STATIC_DIR / "index.html"
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate (ETag): a server upgrade never leaves an old page in the browser
}

STATIC_PREFIX = "/static"
page_router = APIRouter()
page_route = SimpleNamespace(path=STATIC_PREFIX)  # what request metrics and logs call every static file


class PageFiles(StaticFiles):
    """StaticFiles whose answers carry the page's security and cache headers."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Starlette does not name a mount in scope["route"]: without this, the request metrics would count every
        # static file as "unmatched" (service.middleware labels requests with the route's path).
        scope["route"] = page_route
        await super().__call__(scope, receive, send)

    def file_response(self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope,
                      status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(PAGE_HEADERS)
        return response


@page_router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(PAGE_FILE, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


def install_page(app: FastAPI) -> None:
    """GET / (the page) and GET /static/* (its scripts and styles)."""
    app.include_router(page_router)
    app.mount(STATIC_PREFIX, PageFiles(directory=STATIC_DIR), name="static")
