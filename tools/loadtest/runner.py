"""Run a bench: every policy at every load level, one after another, same inputs for each."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from tools.loadtest.driver import Bound, Progress, run_closed, run_load
from tools.loadtest.records import LoadSpec, RequestOutcome, RunSummary
from tools.loadtest.summary import summarize
from tools.loadtest.workloads import Workload

ProgressFactory = Callable[[str, LoadSpec, Bound], "ProgressBar"]


class ProgressBar:
    """What the runner needs from a progress display (tqdm fits; the default shows nothing)."""

    def update(self, n: int = 1) -> object:
        return None

    def close(self) -> None:
        return None


@dataclass
class BenchPlan:
    """Everything a bench does, independent of how inputs are built."""

    url: str
    policies: list[str | None]
    loads: list[LoadSpec]
    bound: Bound
    warmup: int = 0
    slo_ms: float | None = None
    timeout_s: float = 60.0
    max_connections: int = 256
    seed: int = 0


@dataclass
class BenchReport:
    plan: dict[str, Any]
    runs: list[RunSummary] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan, "runs": [asdict(r) for r in self.runs]}


def policy_label(policy: str | None) -> str:
    return policy or "default"


def make_client(url: str, connections: int, timeout_s: float) -> httpx.AsyncClient:
    """One client per run with a pool as large as the run's concurrency. `trust_env=False`:
    proxy variables must never divert loopback benchmark traffic."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=url, limits=limits, timeout=httpx.Timeout(timeout_s),
                             trust_env=False)


async def _one_run(plan: BenchPlan, workload: Workload, load: LoadSpec,
                   progress: Progress | None) -> list[RequestOutcome]:
    connections = int(load.level) if load.mode == "closed" else plan.max_connections
    async with make_client(plan.url, max(1, connections), plan.timeout_s) as client:
        if plan.warmup:
            warm = min(plan.warmup, connections if load.mode == "closed" else 4)
            await run_closed(client, workload, max(1, warm), Bound(requests=plan.warmup))
        return await run_load(client, workload, load, plan.bound, progress, plan.seed,
                              first_index=plan.warmup)


async def run_bench(plan: BenchPlan, workload_for: Callable[[str | None], Workload],
                    progress_for: ProgressFactory | None = None) -> BenchReport:
    """Every (policy, load) pair in order; returns their summaries."""
    report = BenchReport(plan=_plan_dict(plan))
    for policy in plan.policies:
        workload = workload_for(policy)
        for load in plan.loads:
            bar = progress_for(policy_label(policy), load, plan.bound) if progress_for else None
            try:
                outcomes = await _one_run(plan, workload, load, _hook(bar))
            finally:
                if bar is not None:  # not `if bar`: tqdm without a total refuses bool()
                    bar.close()
            report.runs.append(summarize(policy_label(policy), load, outcomes, plan.slo_ms))
    return report


def _hook(bar: ProgressBar | None) -> Progress | None:
    if bar is None:
        return None

    def tick(_outcome: RequestOutcome) -> None:
        bar.update(1)

    return tick


def run_bench_sync(plan: BenchPlan, workload_for: Callable[[str | None], Workload],
                   progress_for: ProgressFactory | None = None) -> BenchReport:
    return asyncio.run(run_bench(plan, workload_for, progress_for))


def _plan_dict(plan: BenchPlan) -> dict[str, Any]:
    d = asdict(plan)
    d["policies"] = [policy_label(p) for p in plan.policies]
    return d
