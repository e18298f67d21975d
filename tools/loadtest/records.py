"""Typed records of one load test: what each request saw, and the summary of a run."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SampleOutcome:
    """One answered input (a text, or one caption) of a successful request."""

    exit_layer: float  # 1-based; a caption's mean over its tokens
    num_layers: int
    correct: bool | None  # None when the input has no label (or the task has no accuracy)
    budget_forced: bool = False
    tokens: int = 0  # captions only


@dataclass(frozen=True)
class RequestOutcome:
    """One request as the client saw it.

    `status` is the HTTP status as a string ("200", "429", ...) or a client-side failure
    ("client_timeout", "connection_error", "protocol_error", "bad_response").
    `latency_s` runs from the request's intended start (open loop: its scheduled arrival, so
    client-side queueing is counted, not hidden) to the last byte of the answer.
    """

    start_s: float  # intended start, seconds since the run began
    latency_s: float
    status: str
    samples: tuple[SampleOutcome, ...] = ()
    server_total_ms: float | None = None
    server_queue_ms: float | None = None
    error_code: str | None = None  # the `code` of an error body, when there is one

    @property
    def ok(self) -> bool:
        return self.status == "200"


@dataclass
class LoadSpec:
    """One load level: `concurrency` clients in a closed loop, or Poisson arrivals at `rate`."""

    mode: str  # "closed" or "open"
    level: float  # concurrency (closed) or requests per second (open)

    @property
    def label(self) -> str:
        return f"c={int(self.level)}" if self.mode == "closed" else f"rate={self.level:g}/s"


@dataclass
class LatencyStats:
    """Latency of the successful requests, in milliseconds."""

    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None


@dataclass
class RunSummary:
    """What one (policy, load level) run measured. Latency figures cover 200 answers only."""

    policy: str
    mode: str
    level: float
    requests: int  # requests finished (any status), warm-up excluded
    ok: int
    samples: int  # inputs answered in ok requests
    duration_s: float  # first intended start to last completion
    throughput_rps: float  # ok requests per second
    samples_per_s: float
    goodput_rps: float  # ok requests within the SLO per second (= throughput without an SLO)
    slo_ms: float | None
    slo_met: int
    latency_ms: LatencyStats
    errors: dict[str, int]  # status -> count, non-200 only
    error_codes: dict[str, int]  # `code` of error bodies -> count
    accuracy: float | None  # over labelled samples of ok requests
    labelled: int
    exit_histogram: dict[int, int]  # exit layer -> samples (captions: rounded mean per caption)
    mean_exit_layer: float | None
    num_layers: int | None
    budget_forced: int
    server_total_ms_p50: float | None = None
    server_queue_ms_p50: float | None = None
    extra: dict[str, float] = field(default_factory=dict)
