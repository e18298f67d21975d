"""Plain stats records the engine emits; service/metrics.py turns them into Prometheus metrics.

Torch-free. The engine calls a `StatsSink` after every layer step and every finished request;
the default sink is `service.metrics.PrometheusStatLogger`, tests may collect into a list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class IterationStats:
    """One layer (or decoder-token layer) step of one cohort."""

    model: str
    batch_size: int  # rows stepped
    layer: int  # 1-based layer just run
    seconds: float  # wall time of the step


@dataclass(frozen=True)
class SampleStats:
    """One finished sample (a text, or one generated token of a caption)."""

    model: str
    policy: str
    exit_layer: int
    num_layers: int
    budget_forced: bool


@dataclass(frozen=True)
class RequestStats:
    """One finished HTTP-level request."""

    model: str
    policy: str
    endpoint: str  # "classify", "caption", "infer"
    status: str  # "ok", or an error class such as "bad_request", "overloaded", "timeout"
    queue_seconds: float
    total_seconds: float


@dataclass(frozen=True)
class CaptionStats:
    """One finished caption."""

    model: str
    policy: str
    tokens: int
    time_to_first_token_seconds: float
    seconds_per_token: float


@dataclass(frozen=True)
class ShadowCheckStats:
    """One shadow check: did the early answer equal the full-depth answer?"""

    model: str
    policy: str
    exit_layer: int  # where the row was answered
    agreed: bool
    token: bool = False  # a caption token rather than a classified text


@dataclass(frozen=True)
class ShadowDropStats:
    model: str
    reason: str  # "load" (queue not empty), "backlog" (too many waiting), "stale", "error"
    rows: int


@dataclass(frozen=True)
class AgreementStats:
    """Current live agreement of one (model, policy, exit) against its promise."""

    model: str
    policy: str
    exit: str  # "1".."K", or "all"
    lower: float
    upper: float
    promise: float
    support: int


@dataclass(frozen=True)
class RetuneStats:
    """One threshold change made by guarded retuning (or a reset)."""

    model: str
    policy: str
    exit_layer: int
    direction: str  # "raise", "lower", "reset"
    threshold: float | None  # the new threshold (None = never exit there)
    budget_shift: float | None  # EENet: validation cost now minus at calibration (fraction)


@dataclass(frozen=True)
class AlarmStats:
    """The drift alarm of one (model, policy) fired (`firing`) or was reset."""

    model: str
    policy: str
    firing: bool
    reaction: str  # on_alarm: "none", "retune" or "fallback"


class StatsSink(Protocol):
    def record_iteration(self, s: IterationStats) -> None: ...

    def record_sample(self, s: SampleStats) -> None: ...

    def record_request(self, s: RequestStats) -> None: ...

    def record_caption(self, s: CaptionStats) -> None: ...

    def set_queue_depth(self, n: int) -> None: ...

    def set_loaded_models(self, n: int) -> None: ...


class NullSink:
    """Discards everything (offline tools, tests that do not look at metrics)."""

    def record_iteration(self, s: IterationStats) -> None:
        pass

    def record_sample(self, s: SampleStats) -> None:
        pass

    def record_request(self, s: RequestStats) -> None:
        pass

    def record_caption(self, s: CaptionStats) -> None:
        pass

    def set_queue_depth(self, n: int) -> None:
        pass

    def set_loaded_models(self, n: int) -> None:
        pass
