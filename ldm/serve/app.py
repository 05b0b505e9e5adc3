"""The FastAPI application of ldm-serve: the A1111 and OpenAI routes and the web page behind the guards, and every
error as JSON.

Outermost first: the access log, CORS (only with --cors-allow-origins), credentials, the body-size limit.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from ldm import __version__
from ldm.errors import LdmError
from ldm.serve import a1111_routes, openai_routes, web_routes
from ldm.serve.awaiting import ClientGone
from ldm.serve.errors import body, message_of, status_of
from ldm.serve.guards import AccessLog, BodyLimit, Credentials
from ldm.serve.server import Server

log = logging.getLogger("ldm.serve")


def create_app(server: Server) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.start()
        yield
        server.close()

    app = FastAPI(title="ldm-serve", version=__version__, lifespan=lifespan)
    app.state.server = server
    app.include_router(a1111_routes.router)
    app.include_router(openai_routes.router)
    app.include_router(web_routes.router)  # the page at /, for people
    for kind, handler in _handlers().items():
        app.add_exception_handler(kind, handler)
    settings = server.settings
    app.add_middleware(BodyLimit, limit=settings.limits.body_bytes)
    app.add_middleware(Credentials, users=settings.users, api_key=settings.api_key)
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"],
                           allow_headers=["*"])  # fmt: skip
    app.add_middleware(AccessLog, depth=server.worker.depth)
    return app


def _json(request: Request, status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> Response:
    return Response(body(request.url.path, status, message, kind), status, headers, media_type="application/json")


def _handlers() -> dict:
    async def invalid(request: Request, e: RequestValidationError) -> Response:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "body"
        message = f"{where}: {first.get('msg', 'invalid')}"
        if where == "body" or first.get("type") == "json_invalid":
            message = "the body must be a JSON object of the API's fields (Content-Type: application/json)"
        return _json(request, 422, message, "ValidationError")

    async def http(request: Request, e: HTTPException) -> Response:
        return _json(request, e.status_code, str(e.detail), "HTTPException", dict(e.headers or {}))

    async def gone(request: Request, e: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it; the log line says what happened

    async def failed(request: Request, e: Exception) -> Response:
        status, headers = status_of(e)
        if status == 500:
            log.error("%s %s failed", request.method, request.url.path, exc_info=e)
        return _json(request, status, message_of(e), type(e).__name__, headers)

    # Exception itself: a bug of ldm's, answered 500 (and logged); the others are the client's or the moment's.
    known = (LdmError, torch.OutOfMemoryError, MemoryError, Exception)
    return {RequestValidationError: invalid, HTTPException: http, ClientGone: gone, **dict.fromkeys(known, failed)}
