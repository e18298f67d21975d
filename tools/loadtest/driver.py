"""Closed-loop and open-loop (Poisson) load drivers over one shared `httpx.AsyncClient`.

Closed loop: `concurrency` workers, each sends its next request as soon as the previous answer
arrived. Open loop: requests start at Poisson arrival times whatever the server does; latency is
measured from the *scheduled* start, so a client or server backlog shows up in the figures
(no coordinated omission). Both stop at `requests` and/or `duration_s`, whichever comes first.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from tools.loadtest.records import LoadSpec, RequestOutcome, SampleOutcome
from tools.loadtest.workloads import BadResponse, Workload

Progress = Callable[[RequestOutcome], None]


@dataclass(frozen=True)
class Bound:
    """When a run stops: after `requests` requests and/or `duration_s` seconds (one is set)."""

    requests: int | None = None
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if self.requests is None and self.duration_s is None:
            raise ValueError("a run needs a request count or a duration")
        if self.requests is not None and self.requests < 1:
            raise ValueError("requests must be >= 1")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError("duration must be > 0")


def _error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None


async def send(client: httpx.AsyncClient, workload: Workload, index: int, intended: float,
               clock: Callable[[], float]) -> RequestOutcome:
    """Send request `index`; `intended` is its scheduled start on `clock`'s time line."""
    body, expected = workload.body(index)
    status, error_code = "200", None
    samples: tuple[SampleOutcome, ...] = ()
    server_total = server_queue = None
    try:
        response = await client.post(workload.path, json=body)
        if response.status_code != 200:
            status, error_code = str(response.status_code), _error_code(response)
        else:
            payload = response.json()
            samples = workload.parse(payload, expected)
            timing = payload.get("timing") or {}
            server_total, server_queue = timing.get("total_ms"), timing.get("queue_ms")
    except httpx.TimeoutException:
        status = "client_timeout"
    except (httpx.TransportError, httpx.StreamError):
        status = "connection_error"
    except (BadResponse, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        status = "bad_response"
    return RequestOutcome(intended, max(clock() - intended, 0.0), status, samples,
                          _num(server_total), _num(server_queue), error_code)


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


async def run_closed(client: httpx.AsyncClient, workload: Workload, concurrency: int,
                     bound: Bound, progress: Progress | None = None,
                     first_index: int = 0) -> list[RequestOutcome]:
    """`concurrency` workers back to back until the bound; outcomes in completion order."""
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    t0 = time.perf_counter()
    clock = lambda: time.perf_counter() - t0  # noqa: E731
    outcomes: list[RequestOutcome] = []
    issued = 0

    def claim() -> int | None:
        nonlocal issued
        if bound.requests is not None and issued >= bound.requests:
            return None
        if bound.duration_s is not None and clock() >= bound.duration_s:
            return None
        issued += 1
        return first_index + issued - 1

    async def worker() -> None:
        while (index := claim()) is not None:
            outcome = await send(client, workload, index, clock(), clock)
            outcomes.append(outcome)
            if progress:
                progress(outcome)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


def poisson_arrivals(rate: float, bound: Bound, seed: int = 0) -> list[float]:
    """Arrival times (seconds from 0) of a Poisson process at `rate`, cut at the bound."""
    if not rate > 0:
        raise ValueError("rate must be > 0")
    rng, t = random.Random(seed), 0.0
    times: list[float] = []
    while bound.requests is None or len(times) < bound.requests:
        t += rng.expovariate(rate)
        if bound.duration_s is not None and t >= bound.duration_s:
            break
        times.append(t)
    return times


async def run_open(client: httpx.AsyncClient, workload: Workload, rate: float, bound: Bound,
                   progress: Progress | None = None, seed: int = 0,
                   first_index: int = 0) -> list[RequestOutcome]:
    """Start requests at Poisson arrival times; wait for every started request to finish."""
    arrivals = poisson_arrivals(rate, bound, seed)
    t0 = time.perf_counter()
    clock = lambda: time.perf_counter() - t0  # noqa: E731
    outcomes: list[RequestOutcome] = []

    async def one(index: int, at: float) -> None:
        outcome = await send(client, workload, index, at, clock)
        outcomes.append(outcome)
        if progress:
            progress(outcome)

    tasks = []
    for i, at in enumerate(arrivals):
        delay = at - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(first_index + i, at)))
    await asyncio.gather(*tasks)
    return outcomes


async def run_load(client: httpx.AsyncClient, workload: Workload, load: LoadSpec, bound: Bound,
                   progress: Progress | None = None, seed: int = 0,
                   first_index: int = 0) -> list[RequestOutcome]:
    if load.mode == "closed":
        return await run_closed(client, workload, int(load.level), bound, progress, first_index)
    if load.mode == "open":
        return await run_open(client, workload, load.level, bound, progress, seed, first_index)
    raise ValueError(f"unknown load mode {load.mode!r}")
