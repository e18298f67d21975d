"""Request body limit: 413 before the body is parsed, from the declared Content-Length or by
counting the chunks as they arrive. Pure ASGI.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import send_error


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a chunked body passes its limit (FastAPI re-raises it)."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body over the limit of {limit} bytes (max_body_bytes)")
        self.limit = limit


class BodyLimitMiddleware:
    """413 for bodies over the path's limit: `limit_for(path)` bytes."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]):
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        rid = scope.get("state", {}).get("request_id", "")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await send_error(send, 400, "bad_request", "Content-Length is not a number", rid)
                return
            if declared > limit:
                await send_error(send, 413, "payload_too_large",
                                 f"request body of {declared} bytes is over the limit of {limit} "
                                 f"bytes (max_body_bytes)", rid)
                return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        try:
            await self.app(scope, counting_receive, send)
        except BodyTooLarge as e:
            await send_error(send, 413, "payload_too_large", str(e.detail), rid)
