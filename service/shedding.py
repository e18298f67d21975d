"""Early load shedding: 429 before anything else is spent on a request.

`Shedder` decides and counts; two places ask it. Under `eeserve serve`, the HTTP protocol
(service/serving.py) asks as soon as a request head is parsed and writes the refusal itself, with
no ASGI task and no middleware (a py-spy profile of the event loop under an open-loop 4x flood
put 60 % of its time in the ASGI stack, a fifth of it in refusals' `send`). `LoadShedMiddleware`,
the outermost middleware, asks again for what reaches the app (any ASGI server) and counts the
inference requests in flight.

Under several times the capacity, what a refusal costs decides the goodput: every millisecond the
event loop spends refusing is taken from the requests being served, and a loop that cannot keep
up leaves requests waiting unseen in socket buffers until their deadlines pass. So an inference
request is refused before the request id, the access log, the API key, the router and the
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
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import REQUEST_ID_HEADER
from service.middleware import endpoint_of, new_request_id, status_label
from service.stats import RequestStats, StatsSink

log = logging.getLogger("eeserve.shed")
_RID = REQUEST_ID_HEADER.encode()
ADMITTED = "eeserve_admitted"  # scope["state"] key: let in and counted in flight


class Shedder:
    """The refusal decision and its bookkeeping, shared by the outermost ASGI middleware
    (`LoadShedMiddleware`) and the HTTP protocol's fast path (service/serving.py), which refuses
    before any ASGI work: no task, no scope for the app, a pre-built response written to the
    socket. `inflight` counts the inference requests inside the app (the middleware's part)."""

    def __init__(self, queue_limit: int, max_inflight: int | None = None,
                 sink: StatsSink | None = None, retry_after_s: int = 1, hold_s: float = 0.0,
                 max_held: int = 1024, caption_queue_limit: int | None = None):
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

    def decide(self, method: str, path: str, engine: Any,
               state: dict[str, Any]) -> tuple[str, bytes] | None:
        """(endpoint label, start of the refusal's body) for an inference request to refuse.
        Otherwise None: an inference request is let in -- counted in flight at once (until
        the middleware sees it out, so requests let in but not yet running count against
        `max_inflight`), marked in `state` and its deadline started; others pass untouched."""
        if method != "POST":
            return None
        endpoint = endpoint_of(path)
        if endpoint is None:
            return None
        head = self._refusal(path, engine)
        if head is not None:
            return endpoint, head
        self.inflight += 1
        state[ADMITTED] = True
        state["received_at"] = time.perf_counter()  # deadlines start here
        return None

    def _refusal(self, path: str, engine: Any) -> bytes | None:
        if self.max_inflight is not None and self.inflight >= self.max_inflight:
            return self._busy_msg
        if engine is None:
            return None
        status = engine.status()
        if path == "/v1/caption" and self.caption_queue_limit is not None:
            full = status.caption_queue_depth >= self.caption_queue_limit  # before images parse
            return self._caption_msg if full else None
        return self._queue_msg if status.texts_queued >= self.queue_limit else None

    def body(self, head: bytes, rid: str) -> bytes:
        return head + rid.encode() + b'"}'

    def take_hold(self) -> float:
        """Seconds to hold the next refusal (0: at once, over `max_held`); a hold taken must be
        given back with `give_back_hold`."""
        if self.hold_s > 0 and self.held < self.max_held:
            self.held += 1
            return self.hold_s
        return 0.0

    def give_back_hold(self) -> None:
        self.held -= 1

    def refused(self, endpoint: str) -> None:
        """Count one refusal sent: a counter, the request metric, a summary log line a second."""
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


def request_id_of(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID when it is short and plain, else a fresh one."""
    given = next((v for k, v in headers if k == _RID), b"")
    return new_request_id(given.decode("latin-1"))


class LoadShedMiddleware:
    """429 (with Retry-After) for inference requests while the engine queue is full or
    `max_inflight` inference requests are in the app (the app shares its `Shedder` with the
    HTTP protocol's fast path)."""

    def __init__(self, app: ASGIApp, shedder: Shedder):
        self.app = app
        self.shedder = shedder

    @property
    def inflight(self) -> int:
        return self.shedder.inflight

    @property
    def held(self) -> int:
        return self.shedder.held

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sh = self.shedder
        state = scope.setdefault("state", {})
        if not state.get(ADMITTED):  # not already let in by the HTTP protocol's fast path
            refusal = sh.decide(scope.get("method", ""), scope["path"],
                                getattr(scope["app"].state, "engine", None), state)
            if refusal is not None:
                await self._refuse(scope, send, *refusal)
                return
            if not state.get(ADMITTED):  # not an inference request
                await self.app(scope, receive, send)
                return
        try:
            await self.app(scope, receive, send)
        finally:
            sh.inflight -= 1

    async def _refuse(self, scope: Scope, send: Send, endpoint: str, head: bytes) -> None:
        sh = self.shedder
        rid = request_id_of(scope.get("headers") or [])
        hold = sh.take_hold()
        if hold > 0:
            try:
                await asyncio.sleep(hold)
            finally:
                sh.give_back_hold()
        body = sh.body(head, rid)
        await send({"type": "http.response.start", "status": 429, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (_RID, rid.encode()), (b"retry-after", sh.retry_after)]})
        await send({"type": "http.response.body", "body": body})
        sh.refused(endpoint)
