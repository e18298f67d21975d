"""Early load shedding: answer 429 before reading the body when the engine queue is full.

Under several times the capacity the cost of refusing matters: parsing and validating a body
only to refuse it takes CPU from the requests being served. This pure-ASGI middleware asks the
engine's cheap `status()` first. The engine's own admission check (queue room reserved before
tokenising) stays the authority; this is the fast path.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import send_error
from service.middleware import endpoint_of


class LoadShedMiddleware:
    def __init__(self, app: ASGIApp, queue_limit: int, retry_after_s: int = 1):
        self.app = app
        self.queue_limit = queue_limit
        self.retry_after = str(retry_after_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope.get("method") == "POST"
                and endpoint_of(scope["path"]) is not None):
            engine = getattr(scope["app"].state, "engine", None)
            if engine is not None and engine.status().queue_depth >= self.queue_limit:
                rid = scope.get("state", {}).get("request_id", "")
                await send_error(send, 429, "overloaded",
                                 f"queue full: limit {self.queue_limit} texts (queue_limit); "
                                 f"retry after {self.retry_after} s", rid,
                                 {"Retry-After": self.retry_after})
                return
        await self.app(scope, receive, send)
