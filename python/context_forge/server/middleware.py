"""Pure-ASGI guards around the app: a request-body size limit and a last-resort error catcher.

`BodyLimit` answers 413 before the route runs when `Content-Length` is over the limit, and counts
the bytes of bodies sent without one (chunked), failing the read with `BodyTooLarge` as soon as
the count passes the limit; a body is never read whole once it is known to be too large.

`CatchAll` turns an exception that no handler took into a 500 with the OpenAI error shape and
does not re-raise it. Starlette's own server-error middleware re-raises after answering, which
makes uvicorn close the connection; with keep-alive, the client's *next* request on that
connection then fails too. Here the failing request is the only one affected.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)


class BodyTooLarge(Exception):
    """The request body passed `limit` bytes (raised while the body is being read)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is larger than the limit of {limit} bytes (max_request_bytes)")
        self.limit = limit


def error_body(message: str, type_: str, code: str | None = None) -> bytes:
    """An OpenAI-shaped error body as JSON bytes."""
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return json.dumps(body).encode()


async def send_json(send: Send, status: int, body: bytes, close: bool = False) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyLimit:
    """Rejects request bodies over `limit` bytes with 413 (`code: request_too_large`)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await send_json(send, 413, too_large_body(self.limit))
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


def too_large_body(limit: int) -> bytes:
    return error_body(str(BodyTooLarge(limit)), "invalid_request_error", "request_too_large")


class CatchAll:
    """Answers 500 for any exception that escaped the app, without re-raising it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except BodyTooLarge as exc:  # read past the limit without a Content-Length header
            if not started:
                await send_json(send, 413, too_large_body(exc.limit))
        except Exception as exc:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                message = f"internal server error ({type(exc).__name__})"
                await send_json(send, 500, error_body(message, "server_error"))


def install(app: Any, max_request_bytes: int) -> None:
    """Wraps `app` (a Starlette/FastAPI app) with `CatchAll` outside `BodyLimit`."""
    app.add_middleware(BodyLimit, limit=max_request_bytes)
    app.add_middleware(CatchAll)
