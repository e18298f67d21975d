#!/usr/bin/env python
"""Measured speed-up of early exit in the serving engine, side by side with `policy=none`.

Runs test-split sentences through the real engine (the code path `eeserve serve` uses), the
policies interleaved request by request so drift hits both alike, and reports per policy:
mean exit layer, layer speed-up (K / mean exit), mean and median engine compute time and
client-side latency per request, measured speed-up over `none`, and the ratio of measured to
layer speed-up. Batch 1 = one text per request, sequential; batch B = one request of B texts.

    python scripts/engine_speedup.py artifacts/text-default --batch 1 8 --n 400 \
        --json docs/figures/engine_speedup_cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from models.artifact import read_manifest  # noqa: E402
from models.build.data import load_movie_reviews  # noqa: E402
from service.engine import EngineConfig, InProcessEngine  # noqa: E402
from service.protocol import ClassifyRequest  # noqa: E402


async def measure(path: str, device: str, policies: list[str], batch: int, n: int,
                  warmup: int) -> dict[str, Any]:
    engine = InProcessEngine(EngineConfig(models=(path,), device=device, max_batch_size=batch,
                                          max_queue_delay_ms=0.0, queue_limit=10_000))
    await engine.start()
    texts = load_movie_reviews().test.texts
    groups = [texts[(i * batch) % len(texts):(i * batch) % len(texts) + batch]
              for i in range(n + warmup)]
    groups = [g for g in groups if len(g) == batch]
    rows: dict[str, dict[str, list[float]]] = {p: {"compute": [], "client": [], "exit": []}
                                               for p in policies}
    for i, g in enumerate(groups):
        for p in policies if i % 2 == 0 else policies[::-1]:
            t0 = time.perf_counter()
            res = await engine.classify(ClassifyRequest(texts=g, policy=p))
            client = (time.perf_counter() - t0) * 1e3
            if i < warmup:
                continue
            rows[p]["compute"].append(max(r.compute_ms for r in res))
            rows[p]["client"].append(client)
            rows[p]["exit"].extend(r.exit_layer for r in res)
    k = next(iter(engine.served.values())).num_exits
    await engine.shutdown(5)
    return summarise(rows, k, policies[0])


def summarise(rows: dict[str, dict[str, list[float]]], k: int, base: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ref = {m: statistics.mean(rows[base][m]) for m in ("compute", "client")}
    for p, r in rows.items():
        mean_exit = statistics.mean(r["exit"])
        layer_speedup = k / mean_exit
        d: dict[str, Any] = {"requests": len(r["compute"]), "mean_exit": round(mean_exit, 3),
                             "layer_speedup": round(layer_speedup, 3)}
        for m in ("compute", "client"):
            mean = statistics.mean(r[m])
            d[f"{m}_mean_ms"] = round(mean, 3)
            d[f"{m}_p50_ms"] = round(statistics.median(r[m]), 3)
            d[f"{m}_speedup"] = round(ref[m] / mean, 3)
            d[f"{m}_speedup_over_layer_speedup"] = round(ref[m] / mean / layer_speedup, 3)
        out[p] = d
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--policy", nargs="+", default=["none", "beem"],
                    help="policies to compare; the first is the reference")
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--n", type=int, default=300, help="requests per policy and batch size")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    man = read_manifest(args.artifact, verify=False)
    report: dict[str, Any] = {
        "artifact": args.artifact, "model": man.get("name"), "device": args.device,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": torch.get_num_threads(), "torch": torch.__version__,
        "policies": {p: (man.get("policies") or {}).get(p, {}).get("params") for p in args.policy},
        "results": {}}
    for b in args.batch:
        res = asyncio.run(measure(args.artifact, args.device, args.policy, b, args.n,
                                  args.warmup))
        report["results"][str(b)] = res
        print(f"batch {b}:")
        for p, d in res.items():
            print(f"  {p:8s} exit {d['mean_exit']:.2f}  layer x{d['layer_speedup']:.2f}  "
                  f"compute {d['compute_mean_ms']:.2f} ms (x{d['compute_speedup']:.2f}, "
                  f"{d['compute_speedup_over_layer_speedup']:.2f} of layer)  client "
                  f"{d['client_mean_ms']:.2f} ms (x{d['client_speedup']:.2f})", flush=True)
    if len(args.batch) > 1:
        b1, bmax = str(args.batch[0]), str(args.batch[-1])
        for p in args.policy[1:]:
            s1 = report["results"][b1][p]["compute_speedup"]
            sb = report["results"][bmax][p]["compute_speedup"]
            report.setdefault("batch_ratio", {})[p] = round(sb / s1, 3)
            print(f"  {p}: batch-{bmax} speed-up / batch-{b1} speed-up = {sb / s1:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
