"""The web page of ldm-serve at `/`: one HTML page, its scripts and its style sheet, shipped in the package
(ldm/serve/web/) and sent as they are: nothing is built, and nothing comes from anywhere but this server.

Only the files listed at import can be asked for, by name, so nothing a client sends becomes a path. The
Content-Security-Policy holds the page to this server's own routes (and to images it makes itself).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from ldm.serve.errors import HttpError

WEB = Path(__file__).with_name("web")
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",  # module scripts must come with a JavaScript type
    ".css": "text/css; charset=utf-8",
}
FILES = {p.name: p for p in WEB.iterdir() if p.suffix in TYPES} if WEB.is_dir() else {}
HEADERS = {
    "Cache-Control": "no-cache",  # a new version of ldm shows its new page without a forced reload
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'",
}
router = APIRouter(include_in_schema=False)


@router.api_route("/", methods=["GET", "HEAD"])
async def page() -> Response:
    return _file("index.html")


@router.api_route("/web/{name}", methods=["GET", "HEAD"])
async def asset(name: str) -> Response:
    return _file(name)


def _file(name: str) -> Response:
    path = FILES.get(name)
    if path is None:
        raise HttpError(404, f"no file {name!r} in the web page; open / for the page")
    return Response(path.read_bytes(), media_type=TYPES[path.suffix], headers=HEADERS)
