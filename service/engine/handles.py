"""Per-request bookkeeping shared by the event loop (waits) and the worker thread (resolves).

A `RequestHandle` holds the tokenised texts of one classify request and collects one result per
text. The worker resolves it exactly once, through `loop.call_soon_threadsafe`, either with all
results or with the first error; rows of a handle that failed, timed out or was cancelled are
dropped from their cohorts at the next step.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from models.base import Encoded
from policies import ExitPolicy
from service.protocol import ClassifyResult, EngineError


@dataclass(frozen=True)
class PolicyKey:
    """Which policy a row runs under: rows with equal keys share a policy object and a cohort."""

    name: str
    params: tuple[tuple[str, Any], ...]  # request overrides, sorted


@dataclass(eq=False)
class RequestHandle:
    model: str
    policy: PolicyKey
    policy_obj: ExitPolicy  # built and validated on the event loop before queueing
    encoded: Encoded  # (n, T) token ids of all texts of the request
    future: asyncio.Future[list[ClassifyResult]]
    loop: asyncio.AbstractEventLoop
    request_id: str
    arrival: float  # time.perf_counter() at submission
    deadline: float  # perf_counter() time past which the request fails with 504
    budget_s: float | None  # per-sample compute budget, seconds
    return_trace: bool
    shadow: bool = False  # every early-exited row of this request gets a shadow check
    results: list[ClassifyResult | None] = field(default_factory=list)
    next_row: int = 0  # rows [0, next_row) have been admitted to the engine
    remaining: int = 0  # rows not yet answered
    done: bool = False  # resolved (result or error) or cancelled
    queue_s: float = 0.0  # longest wait in the queue among admitted rows
    compute_s: float = 0.0  # longest compute time among answered rows

    def __post_init__(self) -> None:
        n = len(self.encoded.lengths)
        self.results = [None] * n
        self.remaining = n

    @property
    def size(self) -> int:
        return len(self.results)

    @property
    def pending_rows(self) -> int:
        return self.size - self.next_row

    def expired(self, now: float) -> bool:
        return now > self.deadline

    def set_row(self, i: int, result: ClassifyResult) -> None:
        """Store one text's result; resolves the future when it was the last (worker thread)."""
        if self.done:
            return
        self.results[i] = result
        self.remaining -= 1
        if self.remaining == 0:
            self.done = True
            out = [r for r in self.results if r is not None]
            self.loop.call_soon_threadsafe(_resolve, self.future, out, None)

    def fail(self, error: EngineError) -> None:
        """Resolve with an error once; later rows of this handle are dropped."""
        if self.done:
            return
        self.done = True
        self.loop.call_soon_threadsafe(_resolve, self.future, None, error)

    def cancel(self) -> None:
        """The client went away (event loop side): its rows leave at the next step."""
        self.done = True


def _resolve(fut: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


def now() -> float:
    return time.perf_counter()
