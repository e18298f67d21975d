"""Request context: request id in and out, one access-log line and one `RequestStats` per
request, and a 500 without a traceback for anything unhandled. Pure ASGI, no torch.

Middleware order, outermost first (see `service.app.create_app`):

    LoadShedMiddleware        service.shedding: 429 before anything else when the engine queue
                              is full or `max_inflight_requests` are in the app
    RequestContextMiddleware  this module
    ApiKeyMiddleware          service.auth: `Authorization: Bearer <key>` -> else 401
    BodyLimitMiddleware       service.limits: 413 before the body is parsed

Logs never contain the API key, the Authorization header, query strings or request bodies
(service.logging_setup drops them by key).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import traceback
import uuid
from dataclasses import dataclass

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import REQUEST_ID_HEADER, send_error
from service.stats import RequestStats, StatsSink

access_log = logging.getLogger("eeserve.access")
error_log = logging.getLogger("eeserve.error")

_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 413: "bad_request",
                 422: "bad_request", 429: "overloaded", 499: "cancelled", 504: "timeout"}
_V2_INFER = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$")


def status_label(code: int) -> str:
    """The `status` label of eeserve_requests_total for an HTTP status code."""
    if code < 400:
        return "ok"
    return _STATUS_CODES.get(code, "bad_request" if code < 500 else "error")


def endpoint_of(path: str) -> str | None:
    """The `endpoint` label of an inference route, or None for other routes."""
    if path == "/v1/classify":
        return "classify"
    if path == "/v1/caption":
        return "caption"
    if _V2_INFER.match(path):
        return "infer"
    return None


def new_request_id(given: str | None) -> str:
    """The client's X-Request-ID when it is short and plain, else a fresh one."""
    if given and _SANE_ID.match(given):
        return given
    return uuid.uuid4().hex


@dataclass
class RequestLabels:
    """What a route learnt about the request, for the access log and the request metrics.
    Routes fill it through `request.state.labels`; names are only ever known model/policy
    names (never raw client input), so label cardinality stays bounded."""

    model: str = "unknown"
    policy: str = "unknown"
    queue_seconds: float = 0.0
    items: int = 0


class ShutdownSignal:
    """Whether the server has begun shutting down (set by service.serving's server)."""

    def __init__(self) -> None:
        self.started = False

    def begin(self) -> None:
        self.started = True


class RequestContextMiddleware:
    """Request id in and out, one JSON access-log line and one RequestStats per request.

    A request cancelled because the shutdown grace period ended (`shutdown.started`) is
    answered 503 with the uniform JSON error; a client that left while its body was being read
    is logged 499. Neither logs a traceback."""

    def __init__(self, app: ASGIApp, sink: StatsSink | None = None,
                 shutdown: ShutdownSignal | None = None):
        self.app = app
        self.sink = sink
        self.shutdown = shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        rid = new_request_id(given)
        labels = RequestLabels()
        scope.setdefault("state", {})
        scope["state"]["request_id"] = rid
        scope["state"]["labels"] = labels
        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["sent"] = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"],
                                      (REQUEST_ID_HEADER.encode(), rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except asyncio.CancelledError:
            if self.shutdown is None or not self.shutdown.started:
                raise
            status["code"] = 503  # the grace period ended: answer, do not re-raise
            if not status["sent"]:
                await send_error(send, 503, "not_ready", "server shut down before the request "
                                 "finished (shutdown_grace_s)", rid)
        except ClientDisconnect:
            status["code"] = 499  # the client left while its body was being read
        except Exception as e:  # noqa: BLE001 -- the last line of defence: log, answer 500
            error_log.error("unhandled error", extra={"request_id": rid, "path": scope["path"],
                                                      "error": f"{type(e).__name__}: {e}",
                                                      "trace": traceback.format_exc()})
            status["code"] = 500
            if not status["sent"]:
                await send_error(send, 500, "internal",
                                 f"internal error; quote request id {rid}", rid)
        finally:
            self._finish(scope, rid, labels, status["code"], time.perf_counter() - started)

    def _finish(self, scope: Scope, rid: str, labels: RequestLabels, code: int,
                seconds: float) -> None:
        endpoint = endpoint_of(scope["path"])
        if endpoint is not None and self.sink is not None and scope.get("method") == "POST":
            self.sink.record_request(RequestStats(
                model=labels.model, policy=labels.policy, endpoint=endpoint,
                status=status_label(code), queue_seconds=labels.queue_seconds,
                total_seconds=seconds))
        access_log.info("request", extra={
            "request_id": rid, "method": scope.get("method"), "path": scope["path"],
            "status": code, "duration_ms": round(seconds * 1000, 3),
            "model": labels.model if endpoint else None, "items": labels.items or None,
            "client": (scope.get("client") or ("", 0))[0]})
