"""REST API v1: health, readiness, models, classification, metrics. No torch."""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.metrics import CONTENT_TYPE
from service.progressive import building, not_ready_line
from service.protocol import ClassifyRequest, ModelInfo, UnknownModel
from service.route_helpers import (
    ERRORS,
    admit,
    body_of,
    check_texts,
    engine_of,
    models_of,
    parse_body,
    received_at,
    server_ready,
    unless_disconnected,
)
from service.schemas import (
    ClassifyBody,
    ClassifyResponse,
    HealthOut,
    ModelInfoOut,
    ModelList,
    ModelReadiness,
    ReadyOut,
    result_dict,
)

router = APIRouter()


@router.get("/healthz", response_model=HealthOut, tags=["health"])
async def healthz() -> HealthOut:
    """Liveness: the process answers."""
    return HealthOut()


@router.get("/readyz", response_model=ReadyOut, tags=["health"],
            responses={503: {"model": ReadyOut, "description": "models not loaded "
                                                                "(see ready_when)"}})
async def readyz(request: Request) -> JSONResponse:
    """Readiness: 200 once every configured model serves (or one, with `ready_when=any`),
    else 503; `detail` names each model that does not serve, and why."""
    infos = models_of(request)
    models = [ModelReadiness(name=m.name, ready=m.ready, error=m.error, **_build_of(m),
                             artifact=(m.details.get("artifact") or {}).get("line"))
              for m in infos]
    ready = server_ready(request)
    detail = "; ".join(f"{m.name}: {not_ready_line(m)}" for m in infos if not m.ready) or \
        (None if ready else "models are not loaded yet")
    body = ReadyOut(status="ready" if ready else "not_ready", models=models, detail=detail)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


def _build_of(m: ModelInfo) -> dict[str, Any]:
    build = m.details.get("build") if building(m) else None
    return {"progress": build["line"], "eta_s": build["eta_s"]} if build else {}


@router.get("/v1/models", response_model=ModelList, tags=["models"])
async def list_models(request: Request) -> ModelList:
    """Every configured model: exits, labels, calibrated policies, per-layer cost, or the reason
    it failed to load."""
    return ModelList(models=[ModelInfoOut.of(m) for m in models_of(request)])


@router.get("/v1/models/{name}", response_model=ModelInfoOut, tags=["models"],
            responses={404: ERRORS[404]})
async def get_model(name: str, request: Request) -> ModelInfoOut:
    for m in models_of(request):
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


@router.post("/v1/classify", response_model=ClassifyResponse, tags=["inference"],
             responses={k: v for k, v in ERRORS.items() if k != 401},
             openapi_extra=body_of(ClassifyBody))
async def classify(request: Request) -> Response:
    """Classify one text or a list; each result says at which exit it left and why."""
    t0 = time.perf_counter()
    body = parse_body(ClassifyBody, await request.body())
    a = admit(request, "text-classifier", body.model, body.policy, body.params, "params",
              lambda settings: check_texts(body.inputs, settings))
    results = await unless_disconnected(request, a.engine.classify(ClassifyRequest(
        texts=a.items, model=body.model, policy=a.policy, params=a.params,
        latency_budget_ms=body.latency_budget_ms,
        deadline_ms=body.deadline_ms, return_trace=body.return_trace,
        request_id=request.state.request_id, shadow=body.shadow,
        received_at=received_at(request))))
    request.state.labels.queue_seconds = max(r.queue_ms for r in results) / 1e3
    timing = {"queue_ms": max(r.queue_ms for r in results),
              "compute_ms": max(r.compute_ms for r in results),
              "total_ms": round((time.perf_counter() - t0) * 1e3, 3)}
    answer = {"request_id": request.state.request_id, "model": a.names.model or "",
              "policy": a.names.policy or "", "results": [result_dict(r) for r in results],
              "timing": timing}  # the ClassifyResponse schema, serialised without re-validation
    return Response(orjson.dumps(answer), media_type="application/json")


@router.get("/metrics", tags=["metrics"], response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}})
async def metrics(request: Request) -> Response:
    """Prometheus metrics (text exposition format)."""
    sink = request.app.state.sink
    return Response(sink.render(), media_type=CONTENT_TYPE)
