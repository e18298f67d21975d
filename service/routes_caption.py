"""REST v1 captioning: `POST /v1/caption` (JSON with base64 images; `stream` → server-sent events).

Limits are checked here, before the engine sees the request, with a 400 naming the field:
images per request (`max_images_per_request`), bytes per image (`max_image_bytes`), pixels per
image (`max_image_pixels`) and aspect ratio (`max_image_aspect`), both read from the image header
*before* decoding, so neither a decompression bomb nor a 1×200000 strip is ever decoded, and
tokens (`max_caption_tokens`). No torch here.

Stream format (`text/event-stream`): `event: token` with {index, text, token_id, exit_layer} as
each token is decided, `event: result` with {index, ...CaptionResultOut} when an image's caption
ends, then `event: done` with {request_id, model, policy}; a failure after the stream started
arrives as `event: error` with the usual error body.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import time
import warnings
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from PIL import Image

from service.errors import CODES
from service.image_limits import ImageLimits, check_header
from service.protocol import (
    BadRequest,
    CaptionEvent,
    CaptionRequest,
    CaptionResult,
    EngineError,
    ResolvedNames,
)
from service.route_helpers import ERRORS, admit, body_of, parse_body, unless_disconnected
from service.schemas import CaptionBody, CaptionResponse, CaptionResultOut, CaptionTiming
from service.settings import Settings

router = APIRouter()


def check_images(body: CaptionBody, settings: Settings) -> list[bytes]:
    """Decoded image files within the limits (BadRequest naming `images` or `images[i]`)."""
    items = [body.images] if isinstance(body.images, str) else list(body.images)
    if not items:
        raise BadRequest("images: give at least one image", "images")
    if len(items) > settings.max_images_per_request:
        raise BadRequest(f"images: {len(items)} images is over the limit of "
                         f"{settings.max_images_per_request} (max_images_per_request)", "images")
    limits = ImageLimits(settings.max_image_pixels, settings.max_image_aspect)
    out = []
    for i, b64 in enumerate(items):
        name = f"images[{i}]"
        if len(b64) > settings.max_image_bytes * 4 // 3 + 4:
            raise BadRequest(f"{name}: image is over the limit of {settings.max_image_bytes} "
                             f"bytes (max_image_bytes)", name)
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"{name}: not valid base64", name) from None
        if len(raw) > settings.max_image_bytes:
            raise BadRequest(f"{name}: {len(raw)} bytes is over the limit of "
                             f"{settings.max_image_bytes} (max_image_bytes)", name)
        check_pixels(raw, name, limits)
        out.append(raw)
    return out


def check_pixels(raw: bytes, name: str, limits: ImageLimits) -> None:
    """Read only the header: size within `limits` (pixels, aspect ratio), else 400 naming
    `name` and the limit (the image is not decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as im:  # lazy: parses the header only
                check_header(im, name, limits)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadRequest(f"{name}: image is too large to decode (decompression bomb guard); "
                         f"limit {limits.max_pixels} pixels (max_image_pixels)", name) from None
    except (OSError, ValueError, SyntaxError):
        raise BadRequest(f"{name}: not a readable image (PNG, JPEG, ...)", name) from None


@router.post("/v1/caption", response_model=CaptionResponse, tags=["inference"],
             responses={**{k: v for k, v in ERRORS.items() if k != 401},
                        200: {"content": {"text/event-stream": {}},
                              "description": "JSON, or server-sent events when `stream`"}},
             openapi_extra=body_of(CaptionBody))
async def caption(request: Request) -> CaptionResponse | StreamingResponse:
    """Caption one image or a list; every token says at which decoder layer it exited."""
    t0 = time.perf_counter()
    body = parse_body(CaptionBody, await request.body())
    a = admit(request, "captioner", body.model, body.policy, body.params, "params",
              lambda settings: check_caption(body, settings))
    req = CaptionRequest(images=a.items, model=body.model, policy=a.policy, params=a.params,
                         max_tokens=body.max_tokens or a.settings.max_caption_tokens,
                         latency_budget_ms=body.latency_budget_ms, deadline_ms=body.deadline_ms,
                         request_id=request.state.request_id)
    if body.stream:
        events = a.engine.caption_stream(req)
        first = await anext(events)  # errors before the first event are plain HTTP errors
        rid = request.state.request_id
        return StreamingResponse(_sse(first, events, rid, a.names),
                                 media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})
    results = await unless_disconnected(request, a.engine.caption(req))  # gone: 499, dropped
    request.state.labels.queue_seconds = max(r.queue_ms for r in results) / 1e3
    return _response(request.state.request_id, a.names, results, t0)


def check_caption(body: CaptionBody, settings: Settings) -> list[bytes]:
    """`max_tokens` within `max_caption_tokens`, then the images (`check_images`)."""
    if body.max_tokens is not None and body.max_tokens > settings.max_caption_tokens:
        raise BadRequest(f"max_tokens: {body.max_tokens} is over the limit of "
                         f"{settings.max_caption_tokens} (max_caption_tokens)", "max_tokens")
    return check_images(body, settings)


def _response(rid: str, names: ResolvedNames, results: list[CaptionResult],
              t0: float) -> CaptionResponse:
    timing = CaptionTiming(queue_ms=max(r.queue_ms for r in results),
                           total_ms=round((time.perf_counter() - t0) * 1e3, 3))
    return CaptionResponse(request_id=rid, model=names.model or "", policy=names.policy or "",
                           timing=timing,
                           results=[CaptionResultOut.of(r) for r in results])


def _event(name: str, data: dict[str, object]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def _encode(ev: CaptionEvent) -> bytes:
    if ev.result is not None:
        return _event("result", {"index": ev.index,
                                 **CaptionResultOut.of(ev.result).model_dump()})
    assert ev.token is not None
    return _event("token", {"index": ev.index, "text": ev.token.text,
                            "token_id": ev.token.token_id, "exit_layer": ev.token.exit_layer})


async def _sse(first: CaptionEvent, rest: AsyncIterator[CaptionEvent], rid: str,
               names: ResolvedNames) -> AsyncIterator[bytes]:
    yield _encode(first)
    try:
        async for ev in rest:
            yield _encode(ev)
    except EngineError as e:
        yield _event("error", {"error": e.message, "code": CODES.get(e.status, "error"),
                               "field": e.field, "request_id": rid})
        return
    yield _event("done", {"request_id": rid, "model": names.model or "",
                          "policy": names.policy or ""})
