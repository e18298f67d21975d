"""Open Inference Protocol v2 (KServe v2 REST) for the text classifiers. No torch.

Model `m` takes input `TEXT` (BYTES, shape [N] or [N, 1]) and answers `LABEL` (BYTES [N]),
`LABEL_ID` (INT64 [N]), `PROBS` (FP32 [N, C]) and `EXIT_LAYER` (INT32 [N]). Request parameters:
`policy`, `latency_budget_ms`, `deadline_ms`, `binary_data_output`; any other parameter is passed
to the policy (e.g. `threshold`). Response parameters: `policy`, `mean_exit_layer`,
`layers_computed`, `num_layers`, `total_ms`. Errors are `{"error": "..."}` (plus our fields).
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.oip import (
    HEADER,
    RawRequest,
    decode_bytes,
    encode_tensor,
    flatten,
    shape_size,
    split_body,
)
from service.protocol import (
    BadRequest,
    ClassifyRequest,
    ClassifyResult,
    ModelInfo,
    UnknownModel,
)
from service.route_helpers import (
    ERRORS,
    admit,
    check_text,
    engine_of,
    received_at,
    server_ready,
    unless_disconnected,
    validated,
)
from service.schemas import (
    InferParameters,
    InferRequestBody,
    LiveOut,
    ModelMetadata,
    ModelReadyOut,
    ReadyV2Out,
    ServerMetadata,
    TensorMetadata,
    infer_body_schema,
)
from service.settings import Settings

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])
OUTPUTS = ("LABEL", "LABEL_ID", "PROBS", "EXIT_LAYER")


@router.get("", response_model=ServerMetadata)
async def server_metadata() -> ServerMetadata:
    from service import __version__

    return ServerMetadata(name="eeserve", version=__version__,
                          extensions=["binary_tensor_data", "early_exit"])


@router.get("/health/live", response_model=LiveOut)
async def live() -> LiveOut:
    return LiveOut(live=True)


@router.get("/health/ready", response_model=ReadyV2Out, responses={503: {"model": ReadyV2Out}})
async def ready(request: Request) -> JSONResponse:
    ok = server_ready(request)
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


def _model(request: Request, name: str) -> ModelInfo:
    for m in engine_of(request).models():
        if m.name == name:
            return m
    raise UnknownModel(f"unknown model {name!r}", "model_name")


@router.get("/models/{name}", response_model=ModelMetadata, responses={404: ERRORS[404]})
@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata,
            include_in_schema=False)
async def model_metadata(name: str, request: Request, version: str | None = None) -> ModelMetadata:
    m = _model(request, name)
    c = len(m.labels)
    return ModelMetadata(
        name=m.name, versions=["1"], platform=f"eeserve_{m.kind.replace('-', '_')}",
        inputs=[TensorMetadata(name="TEXT", datatype="BYTES", shape=[-1])],
        outputs=[TensorMetadata(name="LABEL", datatype="BYTES", shape=[-1]),
                 TensorMetadata(name="LABEL_ID", datatype="INT64", shape=[-1]),
                 TensorMetadata(name="PROBS", datatype="FP32", shape=[-1, c]),
                 TensorMetadata(name="EXIT_LAYER", datatype="INT32", shape=[-1])],
        parameters={"num_exits": m.num_exits, "default_policy": m.default_policy,
                    "labels": ",".join(m.labels)})


@router.get("/models/{name}/ready", response_model=ModelReadyOut, responses={404: ERRORS[404]})
@router.get("/models/{name}/versions/{version}/ready", include_in_schema=False)
async def model_ready(name: str, request: Request, version: str | None = None) -> JSONResponse:
    m = _model(request, name)
    return JSONResponse({"name": m.name, "ready": m.ready}, status_code=200 if m.ready else 503)


@router.post("/models/{name}/infer", response_model=None, responses={
    **{k: v for k, v in ERRORS.items() if k != 401},
    200: {"description": "JSON, or JSON header + binary tensors (binary tensor extension)"}},
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": {k: v for k, v in infer_body_schema().items() if k != "$defs"}}}}})
@router.post("/models/{name}/versions/{version}/infer", include_in_schema=False,
             response_model=None)
async def infer(name: str, request: Request, version: str | None = None) -> Response:
    """Classify a BYTES tensor of texts (JSON or binary tensors; see the module docstring)."""
    t0 = time.perf_counter()
    info = _model(request, name)
    raw = split_body(await request.body(), request.headers.get(HEADER))
    body = validated(InferRequestBody, raw.header)
    params = validated(InferParameters, body.parameters, ("parameters",))
    a = admit(request, "text-classifier", info.name, params.policy, params.policy_params(),
              "parameters", lambda settings: _texts(body, raw, settings))
    results = await unless_disconnected(request, a.engine.classify(ClassifyRequest(
        texts=a.items, model=info.name, policy=a.policy, params=a.params,
        latency_budget_ms=params.latency_budget_ms, deadline_ms=params.deadline_ms,
        request_id=request.state.request_id, shadow=params.shadow,
        received_at=received_at(request))))
    request.state.labels.queue_seconds = max(r.queue_ms for r in results) / 1e3
    return _answer(body, params, info, results, a.names.policy or "",
                   (time.perf_counter() - t0) * 1e3)


def _flag(params: dict[str, Any], key: str, default: bool, field: str) -> bool:
    """A boolean tensor parameter (`binary_data`), never a truthy string or number."""
    v = params.get(key, default)
    if not isinstance(v, bool):
        raise BadRequest(f"{field}.{key} must be a boolean, got {v!r}", f"{field}.{key}")
    return v


def _texts(body: InferRequestBody, raw: RawRequest, settings: Settings) -> list[str]:
    if len(body.inputs) != 1 or body.inputs[0].name != "TEXT":
        got = [t.name for t in body.inputs]
        raise BadRequest(f"inputs: expected exactly one tensor named TEXT, got {got}", "inputs")
    t = body.inputs[0]
    if t.datatype != "BYTES":
        raise BadRequest(f"inputs[0].datatype: TEXT must be BYTES, got {t.datatype}",
                         "inputs[0].datatype")
    if len(t.shape) not in (1, 2) or (len(t.shape) == 2 and t.shape[1] != 1):
        raise BadRequest(f"inputs[0].shape: TEXT must be [N] or [N, 1], got {t.shape}",
                         "inputs[0].shape")
    n = shape_size(t.shape, "inputs[0]")
    if not 1 <= n <= settings.max_texts_per_request:
        raise BadRequest(f"inputs[0].shape: {n} texts, allowed 1..{settings.max_texts_per_request}"
                         " (max_texts_per_request)", "inputs[0].shape")
    items = _items(t.data, t.parameters, raw, n)
    texts = []
    for i, b in enumerate(items):
        try:
            s = b.decode("utf-8") if isinstance(b, bytes) else b
        except UnicodeDecodeError:
            raise BadRequest(f"inputs[0][{i}] is not UTF-8 text", "inputs[0].data") from None
        if not isinstance(s, str):
            raise BadRequest(f"inputs[0][{i}] must be a string", "inputs[0].data")
        texts.append(check_text(s, f"inputs[0].data[{i}]", settings))
    return texts


def _items(data: list[Any] | None, params: dict[str, Any], raw: RawRequest,
           n: int) -> list[Any]:
    size = params.get("binary_data_size")
    if size is not None:
        if data is not None:
            raise BadRequest("inputs[0]: both data and binary_data_size given", "inputs[0]")
        if isinstance(size, bool) or not isinstance(size, int) or size != len(raw.binary):
            raise BadRequest(f"inputs[0].parameters.binary_data_size={size!r} but "
                             f"{len(raw.binary)} binary bytes follow the header",
                             "inputs[0].parameters.binary_data_size")
        return decode_bytes(raw.binary, n, "inputs[0]")
    if data is None:
        raise BadRequest("inputs[0].data is missing (and no binary_data_size)", "inputs[0].data")
    flat = flatten(data)
    if len(flat) != n:
        raise BadRequest(f"inputs[0]: shape says {n} elements, data has {len(flat)}",
                         "inputs[0].data")
    return flat


def _answer(body: InferRequestBody, params: InferParameters, info: ModelInfo,
            results: list[ClassifyResult], policy: str, total_ms: float) -> Response:
    n, c = len(results), len(results[0].probabilities)
    tensors: dict[str, tuple[str, list[int], list[Any]]] = {
        "LABEL": ("BYTES", [n], [r.label for r in results]),
        "LABEL_ID": ("INT64", [n], [r.label_id for r in results]),
        "PROBS": ("FP32", [n, c], [p for r in results for p in r.probabilities]),
        "EXIT_LAYER": ("INT32", [n], [r.exit_layer for r in results]),
    }
    wanted = [o.name for o in body.outputs] if body.outputs else list(OUTPUTS)
    for w in wanted:
        if w not in tensors:
            raise BadRequest(f"outputs: unknown output {w!r}; known: {list(OUTPUTS)}", "outputs")
    binary_all = params.binary_data_output
    per_output = {o.name: _flag(o.parameters, "binary_data", binary_all, f"outputs[{i}]"
                                ".parameters") for i, o in enumerate(body.outputs or [])}
    outputs, blobs = [], []
    for w in wanted:
        dtype, shape, data = tensors[w]
        entry: dict[str, Any] = {"name": w, "datatype": dtype, "shape": shape}
        if per_output.get(w, binary_all):
            blob = encode_tensor(dtype, data)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = data
        outputs.append(entry)
    layers = sum(r.exit_layer for r in results)
    header = {"model_name": info.name, "model_version": "1", "id": body.id or "",
              "parameters": {"policy": policy, "mean_exit_layer": round(layers / n, 4),
                             "layers_computed": layers, "num_layers": info.num_exits,
                             "total_ms": round(total_ms, 3)},
              "outputs": outputs}
    head = json.dumps(header).encode()
    if not blobs:
        return Response(head, media_type="application/json")
    return Response(head + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})
