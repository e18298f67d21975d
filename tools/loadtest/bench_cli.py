"""The body of `eeserve bench`: build the plan and inputs, check the server, run, report."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

import httpx

from tools.errors import CliError
from tools.loadtest.driver import Bound
from tools.loadtest.net import UrlError, base_url
from tools.loadtest.records import LoadSpec
from tools.loadtest.report import format_histograms, format_table, write_json, write_plot
from tools.loadtest.runner import BenchPlan, ProgressBar, run_bench_sync
from tools.loadtest.workloads import (
    CaptionWorkload,
    ClassifyWorkload,
    RequestOptions,
    TextPool,
    Workload,
)

DEFAULT_REQUESTS = 100


def plan_from_args(args: argparse.Namespace) -> BenchPlan:
    try:
        url = base_url(args.url, allow_remote=args.allow_remote)
    except UrlError as e:
        raise CliError(str(e)) from None
    loads = [LoadSpec("closed", float(c)) for c in (args.concurrency or [])]
    loads += [LoadSpec("open", float(r)) for r in (args.rate or [])]
    requests = args.requests
    if requests is None and args.duration is None:
        requests = DEFAULT_REQUESTS
    try:
        bound = Bound(requests=requests, duration_s=args.duration)
    except ValueError as e:
        raise CliError(f"--requests / --duration: {e}") from None
    return BenchPlan(url=url, policies=list(args.policy or [None]),
                     loads=loads or [LoadSpec("closed", 1.0)],
                     bound=bound,
                     warmup=args.warmup,
                     slo_ms=args.slo_ms if args.slo_ms is not None else args.latency_budget_ms,
                     timeout_s=args.timeout, max_connections=args.max_connections,
                     seed=args.seed)


def preflight(url: str, task: str, timeout_s: float = 5.0) -> str | None:
    """Check that the server answers; for captions, that it serves a captioner.
    Returns a reason to skip the bench, or None."""
    try:
        with httpx.Client(base_url=url, timeout=timeout_s, trust_env=False) as client:
            client.get("/healthz")
            if task != "caption":
                return None
            r = client.get("/v1/models")
    except httpx.HTTPError as e:
        raise CliError(f"cannot reach {url}: {e}") from None
    if r.status_code != 200:
        return f"{url} has no /v1/models (HTTP {r.status_code}); caption bench skipped"
    try:
        models = r.json().get("models", [])
    except ValueError:
        models = []
    if not any(isinstance(m, dict) and m.get("kind") == "captioner" for m in models):
        return f"{url} serves no captioning model; caption bench skipped"
    return None


def workload_factory(args: argparse.Namespace, pool: TextPool | None) -> Any:
    def build(policy: str | None) -> Workload:
        options = RequestOptions(policy=policy, params=dict(args.param), model=args.model,
                                 latency_budget_ms=args.latency_budget_ms,
                                 deadline_ms=args.deadline_ms)
        if args.task == "caption":
            return CaptionWorkload(args.batch, options, args.max_tokens, seed=args.seed)
        assert pool is not None
        return ClassifyWorkload(pool, args.batch, options, seed=args.seed)
    return build


def tqdm_factory(stream: TextIO) -> Any:
    from tqdm import tqdm

    def make(policy: str, load: LoadSpec, bound: Bound) -> ProgressBar:
        return tqdm(total=bound.requests, desc=f"{policy} {load.label}", unit="req",
                    file=stream, leave=False, dynamic_ncols=True)
    return make


def execute(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    plan = plan_from_args(args)
    skip = preflight(plan.url, args.task)
    if skip:
        print(f"eeserve bench: {skip}", file=err)
        return 0
    pool = None
    if args.task == "classify":
        from tools.loadtest.inputs import load_text_pool

        pool = load_text_pool(args.data, args.dataset, args.split)
    report = run_bench_sync(plan, workload_factory(args, pool),
                            None if args.quiet else tqdm_factory(err))
    report.plan.update(task=args.task, batch=args.batch, inputs=pool.source if pool else "scenes",
                       latency_budget_ms=args.latency_budget_ms, params=dict(args.param))
    print(format_table(report.runs), file=out)
    hist = format_histograms(report.runs)
    if hist:
        print(hist, file=out)
    if args.json:
        write_json(report, args.json)
    if args.plot:
        write_plot(report.runs, args.plot, title=f"eeserve bench {args.task} @ {plan.url}")
    return 0
