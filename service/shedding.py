"""Early load shedding, the outermost middleware: 429 before anything else is spent on a request.

Under several times the capacity, what a refusal costs decides the goodput: every millisecond the
event loop spends refusing is taken from the requests being served, and a loop that cannot keep
up leaves requests waiting unseen in socket buffers until their deadlines pass. So an inference
request is refused here, before the request id, the access log, the API key, the router and the
body, when either

- the engine queue holds `queue_limit` rows (its cheap `status()`), or
- `max_inflight` inference requests are already inside the app (accepted, not yet answered): a
  bound on the work the loop has taken on, which holds even when the loop, not the engine, is
  the bottleneck (the engine queue then stays short while requests pile up waiting for the loop).

The refusal is a pre-built JSON body (the uniform error, with a fresh request id) and one
counter; refusals are logged as one summary line per second, not one line each. A refusal is
held for `hold_s` before it is sent (a timer, no CPU; at most `max_held` at once, beyond that
at once): a client that ignores Retry-After and sends again as soon as it is refused would
otherwise turn every cheap refusal into another request, and a pool of such clients into a
flood of refusals that takes the event loop from the requests being served. The engine's own
admission (queue room reserved before tokenising; with `deadline_admission`, the expected wait
against the request's deadline) stays the authority; this is the fast path.
"""

from __future__ import annotations

import asyncio
import logging
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import REQUEST_ID_HEADER
from service.middleware import endpoint_of, new_request_id, status_label
from service.stats import RequestStats, StatsSink

log = logging.getLogger("eeserve.shed")
_RID = REQUEST_ID_HEADER.encode()


class LoadShedMiddleware:
    """429 (with Retry-After) for inference requests while the engine queue is full or
    `max_inflight` inference requests are in the app."""

    def __init__(self, app: ASGIApp, queue_limit: int, max_inflight: int | None = None,
                 sink: StatsSink | None = None, retry_after_s: int = 1, hold_s: float = 0.0,
                 max_held: int = 1024, caption_queue_limit: int | None = None):
        self.app = app
        self.hold_s = hold_s
        self.max_held = max_held
        self.held = 0
        self.queue_limit = queue_limit
        self.max_inflight = max_inflight
        self.caption_queue_limit = caption_queue_limit  # images (None: not checked here)
        self.sink = sink
        self.inflight = 0
        self.retry_after = str(retry_after_s).encode()
        self._queue_msg = (f'{{"error": "queue full: limit {queue_limit} texts (queue_limit); '
                           f'retry after {retry_after_s} s", "code": "overloaded", '
                           f'"field": null, "request_id": "').encode()
        self._caption_msg = (f'{{"error": "queue full: limit {caption_queue_limit} images '
                             f'(caption_queue_limit); retry after {retry_after_s} s", '
                             f'"code": "overloaded", "field": null, "request_id": "').encode()
        self._busy_msg = (f'{{"error": "server busy: {max_inflight} requests in flight '
                          f'(max_inflight_requests); retry after {retry_after_s} s", '
                          f'"code": "overloaded", "field": null, "request_id": "').encode()
        self.shed_total = 0
        self._logged_at, self._logged_total = 0.0, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        endpoint = endpoint_of(scope["path"])
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        msg = self._refusal(scope)
        if msg is not None:
            await self._refuse(scope, send, msg, endpoint)
            return
        scope.setdefault("state", {})["received_at"] = time.perf_counter()  # deadlines start
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1

    def _refusal(self, scope: Scope) -> bytes | None:
        """The start of the refusal's body, or None to let the request in."""
        if self.max_inflight is not None and self.inflight >= self.max_inflight:
            return self._busy_msg
        engine = getattr(scope["app"].state, "engine", None)
        if engine is None:
            return None
        status = engine.status()
        if scope["path"] == "/v1/caption" and self.caption_queue_limit is not None:
            full = status.caption_queue_depth >= self.caption_queue_limit  # before images parse
            return self._caption_msg if full else None
        return self._queue_msg if status.texts_queued >= self.queue_limit else None

    async def _refuse(self, scope: Scope, send: Send, head: bytes, endpoint: str) -> None:
        given = next((v for k, v in scope.get("headers") or [] if k == _RID), b"")
        rid = new_request_id(given.decode("latin-1"))  # the client's when plain, else fresh
        if self.hold_s > 0 and self.held < self.max_held:
            self.held += 1
            try:
                await asyncio.sleep(self.hold_s)
            finally:
                self.held -= 1
        body = head + rid.encode() + b'"}'
        await send({"type": "http.response.start", "status": 429, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (_RID, rid.encode()), (b"retry-after", self.retry_after)]})
        await send({"type": "http.response.body", "body": body})
        self.shed_total += 1
        if self.sink is not None:
            self.sink.record_request(RequestStats(
                model="unknown", policy="unknown", endpoint=endpoint,
                status=status_label(429), queue_seconds=0.0, total_seconds=0.0))
        now = time.monotonic()
        if now - self._logged_at >= 1.0:
            log.warning("shedding load", extra={
                "refused": self.shed_total - self._logged_total, "inflight": self.inflight,
                "seconds": round(min(now - self._logged_at, 3600.0), 3)})
            self._logged_at, self._logged_total = now, self.shed_total
