"""REST API v1: health, readiness, models, classification, metrics. No torch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.metrics import CONTENT_TYPE
from service.protocol import BadRequest, ClassifyRequest, EngineClient, NotReady, UnknownModel
from service.schemas import (
    ClassifyBody,
    ClassifyResponse,
    ErrorBody,
    HealthOut,
    ModelInfoOut,
    ModelList,
    ModelReadiness,
    ReadyOut,
    result_dict,
)
from service.settings import Settings

router = APIRouter()
T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (its engine rows are then
    dropped at the next layer step)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task not in done:
        task.cancel()
        raise ClientGone("client disconnected")
    return task.result()
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorBody, "description": d} for s, d in [
        (400, "bad input; the message names the field and the limit"),
        (401, "missing or wrong API key"), (404, "unknown model"),
        (413, "body over max_body_bytes"), (429, "queue full; retry after Retry-After seconds"),
        (500, "internal error (quote the request id)"), (503, "not ready or shutting down"),
        (504, "deadline passed")]}


def engine_of(request: Request) -> EngineClient:
    return request.app.state.engine  # type: ignore[no-any-return]


@router.get("/healthz", response_model=HealthOut, tags=["health"])
async def healthz() -> HealthOut:
    """Liveness: the process answers."""
    return HealthOut()


@router.get("/readyz", response_model=ReadyOut, tags=["health"],
            responses={503: {"model": ReadyOut, "description": "models not (all) loaded"}})
async def readyz(request: Request) -> JSONResponse:
    """Readiness: 200 once every configured model is loaded, else 503 with the reasons."""
    engine = engine_of(request)
    models = [ModelReadiness(name=m.name, ready=m.ready, error=m.error) for m in engine.models()]
    ready = engine.ready()
    body = ReadyOut(status="ready" if ready else "not_ready", models=models)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/v1/models", response_model=ModelList, tags=["models"])
async def list_models(request: Request) -> ModelList:
    """Every configured model: exits, labels, calibrated policies, per-layer cost, or the reason
    it failed to load."""
    return ModelList(models=[ModelInfoOut.of(m) for m in engine_of(request).models()])


@router.get("/v1/models/{name}", response_model=ModelInfoOut, tags=["models"],
            responses={404: ERRORS[404]})
async def get_model(name: str, request: Request) -> ModelInfoOut:
    for m in engine_of(request).models():
        if m.name == name:
            return ModelInfoOut.of(m)
    raise UnknownModel(f"unknown model {name!r}", "name")


@router.post("/v1/models/{name}/retuning/reset", tags=["models"],
             responses={404: ERRORS[404]})
async def reset_retuning(name: str, request: Request) -> dict[str, Any]:
    """Admin: put every threshold that guarded retuning (`EESERVE_ADAPT`) moved back where it
    started (the calibrated values, or the request's own). Behind the API key when one is set."""
    exits = await engine_of(request).reset_retuning(name)
    return {"model": name, "exits_reset": exits}


def check_texts(body: ClassifyBody, settings: Settings) -> list[str]:
    """The texts of a request, within the configured limits (BadRequest naming the field)."""
    texts = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
    if not texts:
        raise BadRequest("inputs: give at least one text", "inputs")
    if len(texts) > settings.max_texts_per_request:
        raise BadRequest(f"inputs: {len(texts)} texts is over the limit of "
                         f"{settings.max_texts_per_request} (max_texts_per_request)", "inputs")
    return [check_text(t, f"inputs[{i}]", settings) for i, t in enumerate(texts)]


def check_text(text: str, field: str, settings: Settings) -> str:
    """One text: non-empty and within `max_chars_per_text` (BadRequest naming `field`)."""
    if not text.strip():
        raise BadRequest(f"{field}: text is empty", field)
    if len(text) > settings.max_chars_per_text:
        raise BadRequest(f"{field}: {len(text)} characters is over the limit of "
                         f"{settings.max_chars_per_text} (max_chars_per_text)", field)
    return text


@router.post("/v1/classify", response_model=ClassifyResponse, tags=["inference"],
             responses={k: v for k, v in ERRORS.items() if k != 401})
async def classify(body: ClassifyBody, request: Request) -> Response:
    """Classify one text or a list; each result says at which exit it left and why."""
    t0 = time.perf_counter()
    settings: Settings = request.app.state.settings
    engine = engine_of(request)
    if not engine.ready():
        raise NotReady("models are not loaded yet")
    texts = check_texts(body, settings)
    model, policy = resolve_names(engine, body.model, body.policy or settings.default_policy)
    labels = request.state.labels
    labels.items = len(texts)
    labels.model, labels.policy = model or "unknown", policy or "unknown"
    results = await unless_disconnected(request, engine.classify(ClassifyRequest(
        texts=texts, model=body.model, policy=body.policy or settings.default_policy,
        params=dict(body.params), latency_budget_ms=body.latency_budget_ms,
        deadline_ms=body.deadline_ms, return_trace=body.return_trace,
        request_id=request.state.request_id, shadow=body.shadow)))
    labels.queue_seconds = max(r.queue_ms for r in results) / 1e3
    timing = {"queue_ms": max(r.queue_ms for r in results),
              "compute_ms": max(r.compute_ms for r in results),
              "total_ms": round((time.perf_counter() - t0) * 1e3, 3)}
    answer = {"request_id": request.state.request_id, "model": model or "",
              "policy": policy or "", "results": [result_dict(r) for r in results],
              "timing": timing}  # the ClassifyResponse schema, serialised without re-validation
    return Response(orjson.dumps(answer), media_type="application/json")


def resolve_names(engine: EngineClient, model: str | None,
                  policy: str | None) -> tuple[str | None, str | None]:
    """The model and policy a request will run under, when known (for labels and answers)."""
    for m in engine.models():
        if m.ready and m.kind == "text-classifier" and (model is None or m.name == model):
            return m.name, policy or m.default_policy
    return None, policy


@router.get("/metrics", tags=["metrics"], response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}})
async def metrics(request: Request) -> Response:
    """Prometheus metrics (text exposition format)."""
    sink = request.app.state.sink
    return Response(sink.render(), media_type=CONTENT_TYPE)
