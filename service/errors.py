"""Uniform error answers: every route, v1 and OIP v2, answers errors with `ErrorBody` JSON.

OIP clients (tritonclient, kserve) read the `error` key; people read `field` and `code`. The
exception handlers (`install`) answer for the routes; `send_error` answers from the pure-ASGI
middleware (auth, limits, load shedding) before a route runs.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from service.protocol import EngineError, Overloaded

REQUEST_ID_HEADER = "x-request-id"
UNPARSABLE = "There was an error parsing the body"  # FastAPI's 400 detail for unreadable JSON


class ClientGone(Exception):
    """The client disconnected before its answer was ready (answered 499, read by nobody)."""


CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "bad_request",
         413: "payload_too_large", 415: "bad_request", 422: "bad_request", 429: "overloaded",
         500: "internal", 503: "not_ready", 504: "timeout"}


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


def error_response(request: Request, status: int, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    rid = getattr(request.state, "request_id", None)
    body = {"error": message, "code": CODES.get(status, "error"), "field": field,
            "request_id": rid}
    return JSONResponse(body, status_code=status, headers=headers)


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path") and not _is_tag(p)]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def _is_tag(part: Any) -> bool:
    """Union-member tags pydantic puts in locations ('str', 'list[str]', 'constrained-int'):
    not request fields."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part
                                      or part.startswith("constrained-"))


def validation_message(exc: RequestValidationError) -> tuple[str, str]:
    """(field, message) of the most specific validation error, in the request's own terms."""
    return describe_errors(list(exc.errors()))


def describe_errors(errors: list[Any], prefix: tuple[Any, ...] = ()) -> tuple[str, str]:
    """(field, message) of the most specific of pydantic's `errors()`, their locations under
    `prefix` (e.g. `("parameters",)`), in the request's own terms: `inputs[0].shape[0]: ...`."""
    errs = errors or [{"loc": ("body",), "msg": "invalid request"}]
    err = max(errs, key=lambda e: len([p for p in e.get("loc", ()) if not _is_tag(p)]))
    field = _loc((*prefix, *err.get("loc", ())))
    msg = str(err.get("msg", "invalid value"))
    if err.get("type") == "json_invalid":
        return "body", "body is not valid JSON"
    if field.startswith("params.") and sum(_loc(tuple(e.get("loc", ()))) == field
                                           for e in errs) > 1:  # no member of the union fits
        return field, (f"{field}: must be a boolean, a string, or a finite number within "
                       f"±2^53")
    if err.get("type") == "extra_forbidden":
        return field, f"{field}: unknown field"
    return field, f"{field}: {msg}"


def install(app: FastAPI) -> None:
    @app.exception_handler(ClientGone)
    async def _gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it; nginx's "client closed request"

    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, exc: EngineError) -> JSONResponse:
        headers = None
        if isinstance(exc, Overloaded):
            headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
        return error_response(request, exc.status, exc.message, exc.field, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        field, msg = validation_message(exc)
        return error_response(request, 400, msg, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        field = None
        if exc.status_code == 400 and detail == UNPARSABLE:  # FastAPI could not read the JSON
            field, detail = "body", ("body is not valid JSON (or nested too deeply, or a number "
                                     "too long to read)")
        return error_response(request, exc.status_code, detail, field,
                              dict(exc.headers) if exc.headers else None)
