"""Per-request bookkeeping shared by the event loop (waits) and the worker thread (resolves).

`Handle` is what every task's request has in common: who asked (request id), when (arrival,
deadline), how fast (latency budget), and a one-way `fail` / `cancel` after which the request's
rows are dropped from their cohorts at the next step. The worker thread hands results back
through `loop.call_soon_threadsafe` only.

    RequestHandle (text): one future, resolved once with every row's result or the first error
    CaptionHandle (captions, service/engine/caption_cohort.py): a stream of events per image
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
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


@dataclass(eq=False, kw_only=True)
class Handle(ABC):
    """One request in the engine: deadline, latency budget, cancel, and a single resolution.

    `done` turns true once (answered, failed or cancelled) and never back; the worker drops a
    done handle's rows between steps. Rows [0, next_row) have left the queue.
    """

    policy: PolicyKey
    policy_obj: ExitPolicy  # built and validated on the event loop before queueing
    loop: asyncio.AbstractEventLoop
    request_id: str
    arrival: float  # time.perf_counter() at submission
    deadline: float  # perf_counter() time past which the request fails with 504
    budget_s: float | None  # per-row compute budget, seconds (from admission)
    done: bool = False  # resolved (result or error) or cancelled
    next_row: int = 0  # rows [0, next_row) have been admitted to the engine

    @property
    @abstractmethod
    def size(self) -> int:
        """Rows (texts or images) in the request."""

    @property
    def pending_rows(self) -> int:
        return self.size - self.next_row

    def expired(self, now: float) -> bool:
        return now > self.deadline

    def budget_end(self, admitted: float) -> float | None:
        """perf_counter() by which a row admitted at `admitted` must be answered, or None."""
        return admitted + self.budget_s if self.budget_s is not None else None

    def fail(self, error: EngineError) -> None:
        """Resolve with an error once (worker thread); later rows of this handle are dropped."""
        if self.done:
            return
        self.done = True
        self._deliver_error(error)

    def cancel(self) -> None:
        """The client went away or stopped listening (event loop side): rows leave at the next
        step."""
        self.done = True

    @abstractmethod
    def _deliver_error(self, error: EngineError) -> None:
        """Hand `error` to the waiting coroutine (thread-safe)."""


@dataclass(eq=False, kw_only=True)
class RequestHandle(Handle):
    """A classify request: the tokenised texts and one result per text."""

    model: str
    encoded: Encoded  # (n, T) token ids of all texts of the request
    future: asyncio.Future[list[ClassifyResult]]
    return_trace: bool
    shadow: bool = False  # every early-exited row of this request gets a shadow check
    results: list[ClassifyResult | None] = field(default_factory=list)
    remaining: int = 0  # rows not yet answered
    queue_s: float = 0.0  # longest wait in the queue among admitted rows
    compute_s: float = 0.0  # longest compute time among answered rows

    def __post_init__(self) -> None:
        n = len(self.encoded.lengths)
        self.results = [None] * n
        self.remaining = n

    @property
    def size(self) -> int:
        return len(self.results)

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

    def _deliver_error(self, error: EngineError) -> None:
        self.loop.call_soon_threadsafe(_resolve, self.future, None, error)


def _resolve(fut: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


def now() -> float:
    return time.perf_counter()
