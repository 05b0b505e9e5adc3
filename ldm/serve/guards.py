"""ASGI middleware in front of every route: credentials, the body-size limit, and one log line per request.

Credentials: HTTP Basic users (A1111's --api-auth) and a Bearer key (OpenAI's), either one opening every
route; each comparison takes the same time whether it fails early or late (hmac.compare_digest), and every
configured credential is compared, so the time does not say which one nearly matched.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import time

from ldm.serve.errors import send_error

log = logging.getLogger("ldm.serve")


class Credentials:
    def __init__(self, app, users: dict[str, str], api_key: str | None):
        self.app, self.users, self.api_key = app, users, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.allowed(_header(scope, b"authorization")):
            return await self.app(scope, receive, send)
        headers = {"WWW-Authenticate": 'Basic realm="ldm-serve"'} if self.users else {}
        message = "credentials required: HTTP Basic (--api-auth) or Authorization: Bearer <key> (--api-key)"
        await send_error(send, scope["path"], 401, message, "Unauthorized", headers)

    def allowed(self, authorization: str) -> bool:
        if not self.users and self.api_key is None:
            return True
        scheme, _, value = authorization.partition(" ")
        value = value.strip()
        granted = False
        if scheme.lower() == "bearer" and self.api_key is not None:
            granted |= hmac.compare_digest(value.encode(), self.api_key.encode())
        if scheme.lower() == "basic" and self.users:
            try:
                user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            for known, secret in self.users.items():  # all of them: no early exit
                same = hmac.compare_digest(user.encode(), known.encode())
                granted |= same & hmac.compare_digest(password.encode(), secret.encode())
        return granted


class BodyLimit:
    """Refuse a body over `limit` bytes with 413: at once when Content-Length says so, else as it streams in."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"the request body is over this server's {self.limit} bytes (--max-body-bytes)"
        length = _header(scope, b"content-length")
        if length.isdigit() and int(length) > self.limit:
            return await send_error(send, scope["path"], 413, message, "PayloadTooLarge")
        seen, started, refused = 0, False, False

        async def counted():
            nonlocal seen, refused
            event = await receive()
            if event["type"] == "http.request":
                seen += len(event.get("body", b""))
                if seen > self.limit and not refused:
                    refused = True
                    if not started:
                        await send_error(send, scope["path"], 413, message, "PayloadTooLarge")
                    return {"type": "http.disconnect"}  # the route stops reading; what it answers is dropped
            return event

        async def watched(event):
            nonlocal started
            if refused:
                return
            started = started or event["type"] == "http.response.start"
            await send(event)

        try:
            await self.app(scope, counted, watched)
        except Exception:
            if not refused:  # the route's failure at reading a body cut short is expected; any other is not
                raise


class AccessLog:
    """`POST /sdapi/v1/txt2img 200 1.23s queue=2` for each request."""

    def __init__(self, app, depth):
        self.app, self.depth = app, depth

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.monotonic(), 500

        async def noted(event):
            nonlocal status
            if event["type"] == "http.response.start":
                status = event["status"]
            await send(event)

        try:
            await self.app(scope, receive, noted)
        finally:
            seconds = time.monotonic() - start
            log.info("%s %s %d %.2fs queue=%d", scope["method"], scope["path"], status, seconds, self.depth())


def _header(scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""
