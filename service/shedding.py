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
from service.protocol import EngineStatus


class LoadShedMiddleware:
    def __init__(self, app: ASGIApp, queue_limit: int, retry_after_s: int = 1,
                 caption_queue_limit: int | None = None):
        self.app = app
        self.queue_limit = queue_limit
        self.caption_queue_limit = caption_queue_limit  # images (None: not checked here)
        self.retry_after = str(retry_after_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope.get("method") == "POST"
                and endpoint_of(scope["path"]) is not None):
            engine = getattr(scope["app"].state, "engine", None)
            full = self._full(engine.status(), scope["path"]) if engine is not None else None
            if full is not None:
                rid = scope.get("state", {}).get("request_id", "")
                await send_error(send, 429, "overloaded", f"queue full: limit {full}; retry "
                                 f"after {self.retry_after} s", rid,
                                 {"Retry-After": self.retry_after})
                return
        await self.app(scope, receive, send)

    def _full(self, status: EngineStatus, path: str) -> str | None:
        """Which limit a request to `path` would meet, or None when there is room."""
        if path == "/v1/caption" and self.caption_queue_limit is not None:
            if status.caption_queue_depth >= self.caption_queue_limit:  # before 8 images parse
                return f"{self.caption_queue_limit} images (caption_queue_limit)"
            return None
        if status.queue_depth >= self.queue_limit:
            return f"{self.queue_limit} texts (queue_limit)"
        return None
