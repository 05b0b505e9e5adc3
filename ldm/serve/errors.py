"""Every error the server answers, as JSON in the shape its client expects: A1111's under /sdapi
(`{"error", "detail", "body", "errors"}`) and OpenAI's under /v1 (`{"error": {"message", "type", ...}}`).

A client's mistake is a 4xx with a one-line message that says what to do; only a failure of ldm itself is a 500.
"""

from __future__ import annotations

import json

import torch

from ldm.errors import LdmError
from ldm.serve.a1111 import NotFound
from ldm.serve.images import BadImage
from ldm.serve.worker import Busy

OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                413: "invalid_request_error", 422: "invalid_request_error", 503: "server_error"}  # fmt: skip


class HttpError(LdmError):
    """An error with its status, raised by the routes and guards themselves."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def status_of(e: BaseException) -> tuple[int, dict[str, str]]:
    """The HTTP status (and headers) an exception answers with."""
    if isinstance(e, HttpError):
        return e.status, e.headers
    if isinstance(e, Busy):
        return 503, {"Retry-After": str(e.retry_after)}
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return 503, {"Retry-After": "10"}  # this request's, not the server's: smaller ones still run
    if isinstance(e, NotFound):
        return 404, {}
    if isinstance(e, BadImage):
        return 400, {}
    if isinstance(e, LdmError):
        return 422, {}
    return 500, {}


def message_of(e: BaseException) -> str:
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return "out of memory for this request; ask for fewer or smaller images, or try again"
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def body(path: str, status: int, message: str, kind: str) -> bytes:
    if path.startswith("/v1/"):
        error = {"message": message, "type": OPENAI_TYPES.get(status, "server_error"), "param": None, "code": None}
        return json.dumps({"error": error}).encode()
    return json.dumps({"error": kind, "detail": message, "body": "", "errors": message}).encode()


async def send_error(send, path: str, status: int, message: str, kind: str, headers: dict[str, str] | None = None):
    """Answer from ASGI middleware, before any route ran."""
    content = body(path, status, message, kind)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": content})
