"""Request context, API-key auth, body-size limit and structured (JSON) logs. Pure ASGI, no torch.

Middleware order, outermost first (see `service.app.create_app`):

    RequestContextMiddleware  request id, access log, request metrics, 500 without a traceback
    ApiKeyMiddleware          `Authorization: Bearer <key>` when a key is configured -> else 401
    BodyLimitMiddleware       413 before the body is parsed (Content-Length, or counted chunks)

Logs never contain the API key, the Authorization header, query strings or request bodies.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.stats import RequestStats, StatsSink

access_log = logging.getLogger("eeserve.access")
error_log = logging.getLogger("eeserve.error")

REQUEST_ID_HEADER = "x-request-id"
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
DOCS_ASSETS = "/static-offline-docs"  # Swagger UI / ReDoc files shipped by fastapi-offline
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready",
                        "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/"})
OPEN_PREFIXES = (f"{DOCS_ASSETS}/", "/static/")  # the docs' and the playground's files
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


async def send_error(send: Send, status: int, code: str, message: str, request_id: str,
                     headers: dict[str, str] | None = None) -> None:
    """Answer with the uniform error body (see service.schemas.ErrorBody)."""
    body = json.dumps({"error": message, "code": code, "field": None,
                       "request_id": request_id}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           (REQUEST_ID_HEADER.encode(), request_id.encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


@dataclass
class RequestLabels:
    """What a route learnt about the request, for the access log and the request metrics.
    Routes fill it through `request.state.labels`; names are only ever known model/policy
    names (never raw client input), so label cardinality stays bounded."""

    model: str = "unknown"
    policy: str = "unknown"
    queue_seconds: float = 0.0
    items: int = 0


class RequestContextMiddleware:
    """Request id in and out, one JSON access-log line and one RequestStats per request."""

    def __init__(self, app: ASGIApp, sink: StatsSink | None = None):
        self.app = app
        self.sink = sink

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


class ApiKeyMiddleware:
    """401 unless `Authorization: Bearer <key>` matches (constant-time compare)."""

    def __init__(self, app: ASGIApp, api_key: str | None, open_paths: frozenset[str],
                 open_prefixes: tuple[str, ...] = ()):
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.open_paths = open_paths
        self.open_prefixes = open_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.key is None or scope["path"] in self.open_paths \
                or scope["path"].startswith(self.open_prefixes):
            await self.app(scope, receive, send)
            return
        auth = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            await self.app(scope, receive, send)
            return
        rid = scope.get("state", {}).get("request_id", "")
        msg = "missing or wrong API key; send `Authorization: Bearer <key>`"
        await send_error(send, 401, "unauthorized", msg, rid, {"WWW-Authenticate": "Bearer"})


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


# ---- JSON logging --------------------------------------------------------------------------------
_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}
_SECRET_KEYS = frozenset({"authorization", "api_key", "password", "token", "body", "text",
                          "texts", "inputs"})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and the record's extras (secrets and
    bodies dropped by key)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                               "logger": record.name, "msg": record.getMessage()}
        for k, v in vars(record).items():
            if k not in _STD_ATTRS and not k.startswith("_") and k.lower() not in _SECRET_KEYS:
                out[k] = v
        if record.exc_info and "trace" not in out:
            out["trace"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def logging_config(json_logs: bool = True, level: str = "info") -> dict[str, Any]:
    """A `logging.config.dictConfig` dict for eeserve and uvicorn (pass it as uvicorn's
    `log_config`); uvicorn's own access log is replaced by `eeserve.access`."""
    fmt = {"()": f"service.security.{'JsonFormatter' if json_logs else 'PlainFormatter'}"}
    lvl = level.upper()
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"default": fmt},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "default",
                                "stream": "ext://sys.stderr"}},
        "loggers": {
            "eeserve": {"handlers": ["stderr"], "level": lvl, "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": lvl, "propagate": False},
            "uvicorn.error": {"level": lvl},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "service": {"handlers": ["stderr"], "level": lvl, "propagate": False},
        },
    }


class PlainFormatter(logging.Formatter):
    """Human-readable lines with the same extras as JsonFormatter, as key=value pairs."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in vars(record).items()
                          if k not in _STD_ATTRS and not k.startswith("_")
                          and k.lower() not in _SECRET_KEYS and k != "trace" and v is not None)
        line = f"{self.formatTime(record)} {record.levelname} {record.name}: " \
               f"{record.getMessage()} {extras}".rstrip()
        trace = getattr(record, "trace", None)
        return f"{line}\n{trace}" if trace else line
