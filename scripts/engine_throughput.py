#!/usr/bin/env python
"""Closed-loop throughput of the engine alone (no HTTP, no load generator on the cores):
`--clients` concurrent single-text requests over the test split, per policy, interleaved runs.

Separates what early exit saves in the engine from what the HTTP stack and the client cost.

    python scripts/engine_throughput.py artifacts/text-default --policy none beem eenet \
        --clients 16 --n 400 --repeats 3 --json docs/figures/engine_throughput_cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.build.data import load_movie_reviews  # noqa: E402
from service.engine import EngineConfig, InProcessEngine  # noqa: E402
from service.protocol import ClassifyRequest  # noqa: E402
from service.stats import IterationStats, NullSink  # noqa: E402


class StepSink(NullSink):
    def __init__(self) -> None:
        self.steps: list[IterationStats] = []

    def record_iteration(self, s: IterationStats) -> None:
        self.steps.append(s)


async def once(path: str, policy: str, clients: int, n: int, batch: int,
               catch_up: int) -> dict[str, Any]:
    sink = StepSink()
    engine = InProcessEngine(EngineConfig(models=(path,), device="cpu", max_batch_size=batch,
                                          queue_limit=10_000, catch_up_rounds=catch_up), sink)
    await engine.start()
    texts = load_movie_reviews().test.texts
    for i in range(2):  # warm-up
        await engine.classify(ClassifyRequest(texts=texts[i * 16:(i + 1) * 16], policy=policy))
    sink.steps.clear()
    nxt, lat, exits = 0, [], []

    async def client() -> None:
        nonlocal nxt
        while nxt < n:
            t = texts[nxt % len(texts)]
            nxt += 1
            t0 = time.perf_counter()
            res = await engine.classify(ClassifyRequest(texts=[t], policy=policy))
            lat.append((time.perf_counter() - t0) * 1e3)
            exits.append(res[0].exit_layer)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    await engine.shutdown(5)
    rows = sum(s.batch_size for s in sink.steps)
    return {"req_s": n / wall, "p50_ms": statistics.median(lat),
            "p99_ms": statistics.quantiles(lat, n=100)[98], "mean_exit": statistics.mean(exits),
            "mean_step_rows": rows / max(1, len(sink.steps)),
            "ms_per_layer_row": sum(s.seconds for s in sink.steps) / max(1, rows) * 1e3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--policy", nargs="+", default=["none", "beem"])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16, help="engine max_batch_size")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--catch-up-rounds", type=int, default=0, help="engine setting (0 = off)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in args.policy}
    for _ in range(args.repeats):
        for p in args.policy:
            runs[p].append(asyncio.run(once(args.artifact, p, args.clients, args.n, args.batch,
                                            args.catch_up_rounds)))
    base = statistics.median(r["req_s"] for r in runs[args.policy[0]])
    out = {}
    for p, rs in runs.items():
        med = {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0]}
        med["speedup"] = round(med["req_s"] / base, 3)
        med["layer_speedup"] = round(6 / med["mean_exit"], 3) if med["mean_exit"] else None
        out[p] = med
        print(f"{p:8s} {med['req_s']:7.1f} req/s (x{med['speedup']:.2f}; layer x"
              f"{med['layer_speedup']:.2f})  p50 {med['p50_ms']:.1f} ms  p99 {med['p99_ms']:.1f} "
              f"ms  rows/step {med['mean_step_rows']:.1f}  ms/layer-row "
              f"{med['ms_per_layer_row']:.3f}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "median_of_repeats": out, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
