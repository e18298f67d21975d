"""Child of `python -m bench.engine checkouts`: one closed-loop engine run on one code tree.

Run as `python -P bench/_engine_child.py ARTIFACT --backend B ...` with PYTHONPATH set to the
tree under test, so the engine, the protocol and the data module all come from that tree; this
file imports nothing from `bench`, which an older tree does not have. `--clients` concurrent
single-text requests over the test split, engine in-process, no HTTP. Prints one JSON line:
req_s, cpu_ms_per_req (process time of all the engine's threads), p50_ms, p99_ms, mean_exit,
backend, precision, service (the directory `service` was imported from).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import service
from service.engine import EngineConfig, InProcessEngine
from service.protocol import ClassifyRequest

try:  # this tree's data module (moved to models.build by issue 13's split)
    from models.build.data import load_movie_reviews
except ImportError:  # a tree from before the split
    from models.data import load_movie_reviews  # type: ignore[no-redef]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    engine = InProcessEngine(EngineConfig(
        models=(args.artifact,), device="cpu", max_batch_size=args.batch, queue_limit=10_000,
        backend=args.backend, torch_threads=args.threads, onnx_threads=args.threads))
    await engine.start()
    texts = load_movie_reviews().test.texts
    for i in range(2):  # warm-up
        await engine.classify(ClassifyRequest(texts=texts[i * 16:(i + 1) * 16],
                                              policy=args.policy))
    nxt, lat, exits = 0, [], []

    async def client() -> None:
        nonlocal nxt
        while nxt < args.n:
            t = texts[nxt % len(texts)]
            nxt += 1
            t0 = time.perf_counter()
            res = await engine.classify(ClassifyRequest(texts=[t], policy=args.policy))
            lat.append((time.perf_counter() - t0) * 1e3)
            exits.append(res[0].exit_layer)

    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client() for _ in range(args.clients)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    try:  # what the tree reports it ran (an older tree may not say)
        details: dict[str, Any] = dict(engine.models()[0].details)
    except (AttributeError, IndexError):
        details = {}
    await engine.shutdown(5)
    return {"req_s": args.n / wall, "cpu_ms_per_req": cpu / args.n * 1e3,
            "p50_ms": statistics.median(lat),
            "p99_ms": statistics.quantiles(lat, n=100)[98], "mean_exit": statistics.mean(exits),
            "backend": details.get("backend", args.backend),
            "precision": details.get("precision"),
            "service": str(Path(service.__file__).parent)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--backend", required=True)
    ap.add_argument("--policy", required=True)
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    print(json.dumps(asyncio.run(run(ap.parse_args()))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
