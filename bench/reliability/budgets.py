"""Latency budgets as promises: the share of rows answered within their `latency_budget_ms`.

Issue 19 item 11: drive a live server with open-loop Poisson arrivals of single test-split
texts carrying `latency_budget_ms`, at a few budgets and loads, and report the share of rows
answered within their budget and their accuracy. A row keeps its promise when the engine's
compute time (`timing.compute_ms`: admission to answer, what the budget bounds) is at most its
budget; the client-side latency (queue and HTTP included) is reported beside it. Each (budget,
rate) cell runs `--duration-s` seconds; a cell without a budget gives the reference accuracy.
`--serve ART` starts `eeserve serve ART --device cpu` on a free loopback port (`--serve-args`
adds flags); `--url` uses a running one. Loopback only.

    python -m bench.reliability.budgets --serve $PWD/artifacts/text-default \\
        --budgets 10 20 40 --rates 10 40 --duration-s 12 --json docs/figures/budget_promises.json
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shlex
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.harness import record, running, serve
from bench.reliability._common import is_loopback, served_settings

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""


async def _one(client: httpx.AsyncClient, url: str, text: str, label: int,
               budget: float | None, policy: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": text}
    if budget is not None:
        body["latency_budget_ms"] = budget
    if policy:
        body["policy"] = policy
    t0 = time.perf_counter()
    r = await client.post(f"{url}/v1/classify", json=body, timeout=30)
    client_ms = (time.perf_counter() - t0) * 1e3
    if r.status_code != 200:
        return {"status": r.status_code}
    out = r.json()
    res = out["results"][0]
    return {"status": 200, "compute_ms": out["timing"]["compute_ms"],
            "total_ms": out["timing"]["total_ms"], "client_ms": client_ms,
            "exit": res["exit_layer"], "forced": res["budget_forced"],
            "correct": res["label_id"] == label}


async def cell(url: str, budget: float | None, rate: float, duration_s: float,
               policy: str | None, data: list[tuple[str, int]], seed: int) -> dict[str, Any]:
    """One (budget, rate) cell: Poisson arrivals for `duration_s`, then its figures."""
    rng = random.Random(seed)
    tasks: list[asyncio.Task[dict[str, Any]]] = []
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=400),
                                 trust_env=False) as client:
        end = time.perf_counter() + duration_s
        i = 0
        while time.perf_counter() < end:
            text, label = data[i % len(data)]
            i += 1
            tasks.append(asyncio.create_task(_one(client, url, text, label, budget, policy)))
            await asyncio.sleep(rng.expovariate(rate))
        rows = await asyncio.gather(*tasks)
    ok = [r for r in rows if r["status"] == 200]
    within = [r for r in ok if budget is None or r["compute_ms"] <= budget]
    over = [r for r in ok if budget is not None and r["compute_ms"] > budget]
    return {
        "budget_ms": budget, "rate": rate, "sent": len(rows), "ok": len(ok),
        "within_budget": round(len(within) / max(1, len(ok)), 4),
        "accuracy": round(sum(r["correct"] for r in ok) / max(1, len(ok)), 4),
        "mean_exit": round(statistics.mean(r["exit"] for r in ok), 3) if ok else None,
        "forced": round(sum(r["forced"] for r in ok) / max(1, len(ok)), 4),
        # over budget already at the first exit: no exit could have kept the promise
        "over_at_first_exit": sum(r["exit"] == 1 for r in over), "over": len(over),
        "compute_p50_ms": round(statistics.median(r["compute_ms"] for r in ok), 2) if ok
        else None,
        "compute_p99_ms": round(statistics.quantiles([r["compute_ms"] for r in ok], n=100)[98],
                                2) if len(ok) > 1 else None,
        "client_p50_ms": round(statistics.median(r["client_ms"] for r in ok), 2) if ok
        else None,
        "statuses": sorted({r["status"] for r in rows})}


def run_cells(args: argparse.Namespace, url: str) -> list[dict[str, Any]]:
    from models.build.data import load_movie_reviews

    test = load_movie_reviews().test
    data = list(zip(test.texts, test.labels, strict=True))
    random.Random(0).shuffle(data)
    cells: list[dict[str, Any]] = []
    for rate in args.rates:
        for budget in [None, *args.budgets]:
            c = asyncio.run(cell(url, budget, rate, args.duration_s, args.policy, data,
                                 seed=len(cells)))
            cells.append(c)
            print(f"rate {rate:5.1f}/s budget {str(budget):>6s} ms: "
                  f"{c['within_budget']:.2%} within, accuracy {c['accuracy']:.2%}, "
                  f"mean exit {c['mean_exit']}, forced {c['forced']:.0%}, compute p50/p99 "
                  f"{c['compute_p50_ms']}/{c['compute_p99_ms']} ms, client p50 "
                  f"{c['client_p50_ms']} ms, {c['ok']}/{c['sent']} ok, over budget "
                  f"{c['over']} ({c['over_at_first_exit']} at exit 1)", flush=True)
    return cells


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.reliability.budgets",
                                 description=DESCRIPTION)
    ap.add_argument("--url", help="a running server on loopback (else --serve starts one)")
    ap.add_argument("--serve", help="artifact to serve on a free loopback port")
    ap.add_argument("--serve-args", default="", help="extra `eeserve serve` flags")
    ap.add_argument("--budgets", type=float, nargs="+", default=[10.0, 20.0, 40.0])
    ap.add_argument("--rates", type=float, nargs="+", default=[10.0, 40.0])
    ap.add_argument("--duration-s", type=float, default=20.0)
    ap.add_argument("--policy", default=None, help="default: the model's")
    ap.add_argument("--json", type=Path, help="write the run's record here")
    args = ap.parse_args(argv)
    if not (args.url or args.serve):
        ap.error("give --url or --serve")
    if args.url and not args.serve and not is_loopback(args.url):
        ap.error("only loopback URLs are allowed")
    if args.serve:
        with tempfile.TemporaryDirectory() as tmp, running(
                serve([args.serve], Path(tmp) / "serve.log",
                      *shlex.split(args.serve_args))) as server:
            settings = served_settings(server.url)
            cells = run_cells(args, server.url)
    else:
        settings = served_settings(args.url)
        cells = run_cells(args, args.url)
    record("reliability.budgets", args.json,
           {"args": vars(args) | {"json": str(args.json)}, "cells": cells}, **settings,
           serve_args=args.serve_args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
