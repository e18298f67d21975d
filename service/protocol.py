"""The seam between the HTTP layer and the engine. Torch-free by contract.

The HTTP layer (service/app.py, service/routes_*) only sees `EngineClient` and the plain
dataclasses below; the in-process engine (service/engine/) implements it with torch, and tests
pass a fake. Errors cross the seam as `EngineError` subclasses that carry their HTTP status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Task = Literal["text-classifier", "captioner"]  # the model kinds a request can ask for


# ---- errors --------------------------------------------------------------------------------
class EngineError(Exception):
    """Base error; `status` is the HTTP status the API layer answers with."""

    status = 500

    def __init__(self, message: str, field_name: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field_name


class BadRequest(EngineError):
    status = 400


class UnknownModel(EngineError):
    status = 404


class Overloaded(EngineError):
    status = 429

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(EngineError):
    status = 504


class NotReady(EngineError):
    status = 503


class InternalError(EngineError):
    status = 500


# ---- requests and results ---------------------------------------------------------------------
@dataclass(frozen=True)
class ClassifyRequest:
    texts: list[str]
    model: str | None = None  # None = the first loaded text model
    policy: str | None = None  # None = the model's default policy
    params: dict[str, Any] = field(default_factory=dict)  # policy parameter overrides
    latency_budget_ms: float | None = None  # per-sample compute budget; forces earlier exits
    deadline_ms: float | None = None  # wall-clock limit from arrival; past it -> 504
    return_trace: bool = False
    request_id: str = ""
    shadow: bool = False  # check every early answer of this request against the last exit
    received_at: float | None = None  # time.perf_counter() when the server got the request;
    # the deadline counts from it (None: from when the engine sees the request)


@dataclass(frozen=True)
class ExitTrace:
    layer: int  # 1-based exit
    prediction: int
    confidence: float  # max softmax probability at this exit
    score: float  # the policy's own score at this exit


@dataclass(frozen=True)
class ClassifyResult:
    label: str
    label_id: int
    probabilities: list[float]
    exit_layer: int  # 1-based exit that answered
    num_layers: int
    confidence: float  # max softmax probability at the exit
    budget_forced: bool  # the latency budget, not the policy, made it exit
    truncated: bool  # the text was cut to the model's max tokens
    queue_ms: float
    compute_ms: float
    total_ms: float
    trace: list[ExitTrace] | None = None


@dataclass(frozen=True)
class CaptionRequest:
    images: list[bytes]  # encoded image files (PNG, JPEG, ...)
    model: str | None = None
    policy: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    max_tokens: int | None = None
    latency_budget_ms: float | None = None  # per-token compute budget
    deadline_ms: float | None = None
    request_id: str = ""


@dataclass(frozen=True)
class TokenInfo:
    text: str
    token_id: int
    exit_layer: int


@dataclass(frozen=True)
class CaptionResult:
    caption: str
    tokens: list[TokenInfo]
    mean_exit_layer: float
    num_layers: int
    time_to_first_token_ms: float
    per_token_ms: float
    queue_ms: float
    total_ms: float


@dataclass(frozen=True)
class CaptionEvent:
    """One streamed item: a token of image `index`, or its final result (`result` set)."""

    index: int
    token: TokenInfo | None = None
    result: CaptionResult | None = None


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: str  # "text-classifier" or "captioner"
    ready: bool
    error: str | None = None  # why it failed to load
    num_exits: int = 0
    labels: list[str] = field(default_factory=list)
    default_policy: str = "none"
    policies: dict[str, Any] = field(default_factory=dict)  # name -> calibrated parameters
    per_layer_ms: dict[str, list[float]] = field(default_factory=dict)  # batch size -> ms/layer
    device: str = "cpu"
    details: dict[str, Any] = field(default_factory=dict)  # manifest extras (accuracy, recipe)


@dataclass(frozen=True)
class ResolvedNames:
    """The model and policy a request runs under, as the engine resolves them: the names its
    answer, its access-log line and its metric labels carry. `None` when the engine does not know
    them (the request will then fail with the engine's own error)."""

    model: str | None
    policy: str | None


@dataclass(frozen=True)
class EngineStatus:
    queue_depth: int
    active_rows: int
    loaded_models: int
    caption_queue_depth: int = 0  # images queued or being decoded for captions
    text_queue_depth: int | None = None  # texts queued for classification (None: queue_depth)

    @property
    def texts_queued(self) -> int:
        """What `queue_limit` bounds: queued texts, not caption rows."""
        return self.queue_depth if self.text_queue_depth is None else self.text_queue_depth


@runtime_checkable
class EngineClient(Protocol):
    """What the HTTP layer may call. All awaitables run torch work off the event loop."""

    async def start(self) -> None:
        """Load models and start the worker; /readyz turns 200 when `ready()`."""

    async def shutdown(self, grace_s: float = 10.0) -> None:
        """Stop accepting, finish in-flight work within `grace_s`, then stop the worker."""

    def ready(self) -> bool: ...

    def models(self) -> list[ModelInfo]: ...

    def status(self) -> EngineStatus: ...

    def resolve(self, task: Task, model: str | None, policy: str | None) -> ResolvedNames:
        """The names a `task` request naming `model` / `policy` (None: the defaults) runs under.
        Never raises; only known model and policy names come back (bounded label values)."""

    async def classify(self, req: ClassifyRequest) -> list[ClassifyResult]:
        """One result per text, in order. Raises EngineError subclasses."""

    async def caption(self, req: CaptionRequest) -> list[CaptionResult]:
        """One caption per image, in order. Raises EngineError subclasses."""

    def caption_stream(self, req: CaptionRequest) -> AsyncIterator[CaptionEvent]:
        """Tokens as they are decided, then one final event per image."""

    async def reset_retuning(self, model: str) -> int:
        """Put every threshold moved by guarded retuning (`adapt`) back where it started;
        returns the exits changed. UnknownModel for a name that is not loaded."""
