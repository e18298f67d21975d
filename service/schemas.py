"""Pydantic request and response models of the REST API (v1) and the OIP v2 bodies. No torch.

Request models are strict (no string-to-number coercion) and forbid unknown keys, so a typo in a
field name is a 400 naming the field rather than a silently ignored option. Size limits depend on
`Settings`; the routes enforce them and `apply_limits` writes them into the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from policies.names import PolicyName
from service.protocol import CaptionResult, ClassifyResult, ModelInfo
from service.settings import Settings

SAFE_INT = 2**53  # numbers beyond this are not exact as floats
# A policy parameter on /v1 (`params`) and /v2 (`parameters`, through route_helpers.check_param):
# a boolean, a string, or a finite number within ±2^53.
ParamValue = (bool | Annotated[int, Field(ge=-SAFE_INT, le=SAFE_INT)]
              | Annotated[float, Field(ge=-SAFE_INT, le=SAFE_INT, allow_inf_nan=False)] | str)
MIN_DEADLINE_MS = 50.0  # shorter deadlines cannot be met over HTTP; rejected as bad input
MAX_MS = 3_600_000.0  # an hour: the largest deadline or budget a request may name

# The limits of the request fields that /v1 and /v2 share, defined once: v1's bodies declare
# them as fields, v2's `parameters` are validated by `InferParameters` with the same types.
DeadlineMs = Annotated[float, Field(ge=MIN_DEADLINE_MS, le=MAX_MS, allow_inf_nan=False,
                                    description="give up (504) after this long; capped by the "
                                                "server's request timeout")]
BudgetMs = Annotated[float, Field(gt=0, le=MAX_MS, allow_inf_nan=False,
                                  description="per-sample compute budget; forces earlier exits")]

_STRICT = ConfigDict(extra="forbid", strict=True)


# ---- errors and health ---------------------------------------------------------------------
class ErrorBody(BaseModel):
    """Every error, on every route. OIP clients read `error`; the rest is for people."""

    error: str = Field(description="what was wrong, naming the field and the limit")
    code: str = Field(description="bad_request, unauthorized, not_found, payload_too_large, "
                                  "overloaded, not_ready, timeout, internal")
    field: str | None = Field(None, description="the offending request field, when one is")
    request_id: str | None = None


class HealthOut(BaseModel):
    status: Literal["ok"] = "ok"


class ModelReadiness(BaseModel):
    name: str
    ready: bool
    error: str | None = None
    progress: str | None = Field(None, description="while the model is being built: its stage "
                                 "and time left, e.g. `training step 310/1060, ~12 min left`")
    eta_s: float | None = Field(None, description="estimated seconds until it serves")
    artifact: str | None = Field(None, description="set when the model's artifact directory on "
                                 "disk is no longer the one it loaded (`removed: ...` or "
                                 "`changed: ...`, one line); the model still serves from memory")


class ReadyOut(BaseModel):
    status: Literal["ready", "not_ready"]
    models: list[ModelReadiness] = []
    detail: str | None = Field(None, description="what is still missing, in one line")


# ---- classification ----------------------------------------------------------------------------
class ClassifyBody(BaseModel):
    """Classify one text or a list of texts; the answer always holds a list of results."""

    model_config = ConfigDict(**_STRICT, json_schema_extra={"examples": [
        {"inputs": "a gripping, beautifully shot film"},
        {"inputs": ["loved it", "a tedious mess"], "policy": "maxprob",
         "params": {"threshold": 0.9}, "latency_budget_ms": 50, "return_trace": True},
    ]})

    inputs: str | list[str] = Field(description="one text, or a list of texts (results in order)")
    model: str | None = Field(None, description="model name; default: the first text model")
    policy: PolicyName | None = Field(None, description="exit policy; default: the model's")
    params: dict[str, ParamValue] = Field(default_factory=dict,
                                          description="policy parameter overrides")
    latency_budget_ms: BudgetMs | None = None
    deadline_ms: DeadlineMs | None = None
    return_trace: bool = Field(False, description="include every exit the sample passed")
    shadow: bool = Field(False, description="after answering, run every early-exited text on "
                                            "to the last exit (when the server is idle) to "
                                            "check the answer; results in /v1/models and "
                                            "/metrics")


class ExitTraceOut(BaseModel):
    layer: int
    prediction: int
    confidence: float
    score: float


class ClassifyResultOut(BaseModel):
    label: str
    label_id: int
    probabilities: list[float]
    exit_layer: int = Field(description="1-based exit that answered")
    num_layers: int
    confidence: float = Field(description="max softmax probability at the exit")
    budget_forced: bool = Field(description="the latency budget, not the policy, made it exit")
    truncated: bool = Field(description="the text was cut to the model's max tokens")
    trace: list[ExitTraceOut] | None = None

    @classmethod
    def of(cls, r: ClassifyResult) -> ClassifyResultOut:
        trace = None if r.trace is None else [
            ExitTraceOut(layer=t.layer, prediction=t.prediction, confidence=t.confidence,
                         score=t.score) for t in r.trace]
        return cls(label=r.label, label_id=r.label_id, probabilities=list(r.probabilities),
                   exit_layer=r.exit_layer, num_layers=r.num_layers, confidence=r.confidence,
                   budget_forced=r.budget_forced, truncated=r.truncated, trace=trace)


def result_dict(r: ClassifyResult) -> dict[str, Any]:
    """`ClassifyResultOut` as a plain dict, built without pydantic (the hot path)."""
    trace = None if r.trace is None else [
        {"layer": t.layer, "prediction": t.prediction, "confidence": t.confidence,
         "score": t.score} for t in r.trace]
    return {"label": r.label, "label_id": r.label_id, "probabilities": list(r.probabilities),
            "exit_layer": r.exit_layer, "num_layers": r.num_layers, "confidence": r.confidence,
            "budget_forced": r.budget_forced, "truncated": r.truncated, "trace": trace}


class Timing(BaseModel):
    queue_ms: float = Field(description="longest wait in the batcher queue among the inputs")
    compute_ms: float = Field(description="longest engine compute time among the inputs")
    total_ms: float = Field(description="server time from arrival to answer")


class ClassifyResponse(BaseModel):
    request_id: str
    model: str
    policy: str
    results: list[ClassifyResultOut]
    timing: Timing


# ---- captioning --------------------------------------------------------------------------------
class CaptionBody(BaseModel):
    """JSON form of a caption request; images are base64-encoded files (PNG, JPEG, ...)."""

    model_config = ConfigDict(**_STRICT, json_schema_extra={"examples": [
        {"images": "iVBORw0KGgo...", "max_tokens": 16, "policy": "maxprob", "stream": False},
    ]})

    images: str | list[str] = Field(description="one base64 image, or a list of them")
    model: str | None = None
    policy: PolicyName | None = None
    params: dict[str, ParamValue] = Field(default_factory=dict)
    max_tokens: int | None = Field(None, ge=1, le=4096)
    latency_budget_ms: BudgetMs | None = Field(None, description="per-token compute budget")
    deadline_ms: DeadlineMs | None = None
    stream: bool = Field(False, description="answer with server-sent events: tokens, then the "
                                            "final result of each image")


class TokenOut(BaseModel):
    text: str
    token_id: int
    exit_layer: int


class CaptionResultOut(BaseModel):
    caption: str
    tokens: list[TokenOut]
    mean_exit_layer: float
    num_layers: int
    time_to_first_token_ms: float
    per_token_ms: float

    @classmethod
    def of(cls, r: CaptionResult) -> CaptionResultOut:
        return cls(caption=r.caption, mean_exit_layer=r.mean_exit_layer, num_layers=r.num_layers,
                   time_to_first_token_ms=r.time_to_first_token_ms, per_token_ms=r.per_token_ms,
                   tokens=[TokenOut(text=t.text, token_id=t.token_id, exit_layer=t.exit_layer)
                           for t in r.tokens])


class CaptionTiming(BaseModel):
    queue_ms: float
    total_ms: float


class CaptionResponse(BaseModel):
    request_id: str
    model: str
    policy: str
    results: list[CaptionResultOut]
    timing: CaptionTiming


# ---- models ------------------------------------------------------------------------------------
class ModelInfoOut(BaseModel):
    name: str
    kind: str
    ready: bool
    error: str | None = None
    num_exits: int
    labels: list[str]
    default_policy: str
    policies: dict[str, Any] = Field(description="policy name -> calibrated parameters")
    per_layer_ms: dict[str, list[float]] = Field(description="batch size -> ms per layer")
    device: str
    details: dict[str, Any]

    @classmethod
    def of(cls, m: ModelInfo) -> ModelInfoOut:
        return cls(name=m.name, kind=m.kind, ready=m.ready, error=m.error, num_exits=m.num_exits,
                   labels=list(m.labels), default_policy=m.default_policy,
                   policies=dict(m.policies), per_layer_ms=dict(m.per_layer_ms),
                   device=m.device, details=dict(m.details))


class ModelList(BaseModel):
    models: list[ModelInfoOut]


# ---- Open Inference Protocol v2 ------------------------------------------------------------------
Datatype = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                   "INT64", "FP16", "FP32", "FP64", "BYTES"]
OipParams = dict[str, bool | int | float | str]


class LiveOut(BaseModel):
    live: bool


class ReadyV2Out(BaseModel):
    ready: bool


class ModelReadyOut(BaseModel):
    name: str
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: OipParams = {}


_OIP = ConfigDict(extra="forbid", strict=True)  # strict: `shape: [true]` is no shape


class InferInputTensor(BaseModel):
    model_config = _OIP

    name: str
    shape: list[int]
    datatype: Datatype
    parameters: OipParams = {}
    data: list[Any] | None = Field(None, description="row-major, flat or nested; omitted when "
                                                     "the tensor travels as binary data")


class RequestedOutput(BaseModel):
    model_config = _OIP

    name: str
    parameters: OipParams = {}


class InferRequestBody(BaseModel):
    """OIP v2 inference request (JSON part). With the binary tensor extension the body is this
    JSON (`Inference-Header-Content-Length` bytes long) followed by the raw tensors."""

    model_config = ConfigDict(**_OIP, json_schema_extra={"examples": [
        {"inputs": [{"name": "TEXT", "shape": [2], "datatype": "BYTES",
                     "data": ["loved it", "a tedious mess"]}],
         "parameters": {"policy": "maxprob", "latency_budget_ms": 50}},
    ]})

    id: str | None = None
    model_name: str | None = Field(None, description="sent by some clients (kserve); ignored")
    model_version: str | None = None
    parameters: OipParams = {}
    inputs: list[InferInputTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class InferParameters(BaseModel):
    """The request `parameters` of /v2 infer that the server reads, with the same types and
    limits as the same fields of /v1 (`ClassifyBody`); every other key is a policy parameter
    (v1's `params`), checked by the policy."""

    model_config = ConfigDict(extra="allow", strict=True)

    policy: PolicyName | None = None
    latency_budget_ms: BudgetMs | None = None
    deadline_ms: DeadlineMs | None = None
    binary_data_output: bool = False
    return_trace: bool = False
    shadow: bool = False

    def policy_params(self) -> dict[str, ParamValue]:
        """The parameters meant for the exit policy (the keys not declared above)."""
        return dict(self.model_extra or {})


class InferOutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: OipParams = {}
    data: list[Any] | None = None


class InferResponseBody(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str
    parameters: OipParams = {}
    outputs: list[InferOutputTensor]


# ---- OpenAPI limits ------------------------------------------------------------------------------
def infer_body_schema() -> dict[str, Any]:
    """The OIP request body schema, its nested models referenced from components/schemas."""
    return InferRequestBody.model_json_schema(ref_template="#/components/schemas/{model}")


def apply_limits(openapi: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Write the configured size limits into the request schemas of an OpenAPI document (and
    register the request bodies and the nested OIP models that the routes' hand-written bodies
    refer to)."""
    comps = openapi.setdefault("components", {}).setdefault("schemas", {})
    for name, sub in infer_body_schema().get("$defs", {}).items():
        comps.setdefault(name, sub)
    for body in (ClassifyBody, CaptionBody):  # parsed by their routes (route_helpers.body_of)
        comps.setdefault(body.__name__, body.model_json_schema(
            ref_template="#/components/schemas/{model}"))
    classify = comps.get("ClassifyBody", {}).get("properties", {})
    if "inputs" in classify:
        text = {"type": "string", "minLength": 1, "maxLength": settings.max_chars_per_text}
        classify["inputs"]["anyOf"] = [
            text, {"type": "array", "items": text, "minItems": 1,
                   "maxItems": settings.max_texts_per_request}]
    caption = comps.get("CaptionBody", {}).get("properties", {})
    if "images" in caption:
        image = {"type": "string", "minLength": 4,
                 "maxLength": settings.max_image_bytes * 4 // 3 + 4}
        caption["images"]["anyOf"] = [
            image, {"type": "array", "items": image, "minItems": 1,
                    "maxItems": settings.max_images_per_request}]
    if "max_tokens" in caption:
        caption["max_tokens"]["anyOf"] = [
            {"type": "integer", "minimum": 1, "maximum": settings.max_caption_tokens},
            {"type": "null"}]
    return openapi
