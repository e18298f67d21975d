#!/usr/bin/env python
"""Engine before/after benchmark for the engine frame (issue 13): the same closed-loop load as
scripts/engine_throughput.py (`--clients` concurrent single-text requests over the test split,
engine in-process, no HTTP), run on two code trees in alternating subprocesses, several rounds.

Each run is a fresh `python` whose imports come from one tree (PYTHONPATH), so "before" runs the
old engine code and "after" the new one, on the same model, backend and settings; the order of
trees alternates every round so drift on a shared machine hits both alike. Medians per
(tree, backend) of requests/s, client-side p50/p99, and CPU time per request (process time
of all the engine's threads: less sensitive than wall time to other jobs on shared cores).

    git -C /work/main worktree add --detach /work/wt-before f6bf745
    python scripts/engine_frame_bench.py /work/main/artifacts/text-default \
        --before /work/wt-before --after . --backend onnx torch --rounds 5 \
        --json docs/figures/engine_frame_bench.json
    python scripts/engine_frame_bench.py /work/main/artifacts/text-default --backend fake \
        --n 4000 --rounds 7 --json docs/figures/engine_frame_overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


# ---- child: one run on the tree it was started in -------------------------------------------
async def _child(args: argparse.Namespace) -> dict[str, Any]:
    import service  # from PYTHONPATH: the tree under test
    try:  # this tree's data module (moved to models.build by issue 13's split)
        from models.build.data import load_movie_reviews
    except ImportError:
        from models.data import load_movie_reviews  # type: ignore[no-redef]
    from service.engine import EngineConfig, InProcessEngine
    from service.protocol import ClassifyRequest

    engine = InProcessEngine(EngineConfig(
        models=(args.artifact,), device="cpu", max_batch_size=args.batch, queue_limit=10_000,
        backend=args.backend[0], torch_threads=args.threads, onnx_threads=args.threads))
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
    await engine.shutdown(5)
    return {"req_s": args.n / wall, "cpu_ms_per_req": cpu / args.n * 1e3,
            "p50_ms": statistics.median(lat),
            "p99_ms": statistics.quantiles(lat, n=100)[98], "mean_exit": statistics.mean(exits),
            "service": str(Path(service.__file__).parent)}


async def _child_fake(args: argparse.Namespace) -> dict[str, Any]:
    """The frame alone: the text scheduler on a step model that computes nothing (6 exits,
    policy none), driven like the engine drives it; what is left is the loop's own cost."""
    import threading
    from dataclasses import dataclass

    import torch

    import service
    from models.base import Encoded, StepOutput
    from models.loading import LoadedModel
    from policies import build_policy
    from service.engine.config import EngineConfig
    from service.engine.handles import PolicyKey, RequestHandle
    from service.engine.scheduler import Scheduler
    from service.engine.served import ServedModel, StepCost
    from service.stats import NullSink

    @dataclass
    class Batch:
        ids: torch.Tensor  # (B,)
        layer: int

        def __len__(self) -> int:
            return len(self.ids)

        def filter(self, keep: torch.Tensor) -> Batch:
            return Batch(self.ids[keep], self.layer)

        @classmethod
        def concatenate(cls, bs: list[Batch]) -> Batch:
            return cls(torch.cat([b.ids for b in bs]), bs[0].layer)

    class Model:
        num_exits, device, backend = 6, "cpu", "torch"

        def embed(self, enc: Encoded) -> Batch:
            return Batch(enc.input_ids[:, 0].clone(), 0)

        def advance(self, b: Batch, k: int) -> Batch:
            return Batch(b.ids, k)

        def step(self, b: Batch, k: int) -> StepOutput:
            return StepOutput(logits=torch.zeros(len(b), 2), batch=Batch(b.ids, k))

    loaded = LoadedModel("fake", "text-classifier", Model(), {"labels": ["a", "b"]}, Path("."))
    served = ServedModel(loaded, "none", "cpu", StepCost(0.001))
    sched = Scheduler({"fake": served}, EngineConfig(models=(), max_batch_size=args.batch,
                                                     queue_limit=10_000), NullSink())
    worker = threading.Thread(target=sched.run_forever, daemon=True)
    worker.start()
    key, pol = PolicyKey("none", ()), build_policy("none", 6)
    loop = asyncio.get_running_loop()
    enc = Encoded(torch.tensor([[1, 0]]), torch.ones(1, 2, dtype=torch.long), [2], [False])
    nxt, lat = 0, []

    async def client() -> None:
        nonlocal nxt
        while nxt < args.n:
            nxt += 1
            t0 = time.perf_counter()
            h = RequestHandle(model="fake", policy=key, policy_obj=pol, encoded=enc,
                              future=loop.create_future(), loop=loop, request_id="r",
                              arrival=t0, deadline=t0 + 60, budget_s=None, return_trace=False)
            sched.reserve(1)
            sched.submit(h)
            await h.future
            lat.append((time.perf_counter() - t0) * 1e3)

    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client() for _ in range(args.clients)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    with sched.cond:
        sched.stopped = True
        sched.cond.notify_all()
    worker.join(5)
    return {"req_s": args.n / wall, "cpu_ms_per_req": cpu / args.n * 1e3,
            "p50_ms": statistics.median(lat), "p99_ms": statistics.quantiles(lat, n=100)[98],
            "mean_exit": 6.0, "service": str(Path(service.__file__).parent)}


def _run(tree: Path, backend: str, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree.resolve()), "OMP_WAIT_POLICY": "PASSIVE",
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, str(Path(__file__).resolve()), args.artifact, "--child",
           "--backend", backend, "--policy", args.policy, "--clients", str(args.clients),
           "--n", str(args.n), "--batch", str(args.batch), "--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"run on {tree} ({backend}) failed: {out.stderr[-2000:]}")
    got: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if Path(got["service"]).resolve() != (tree / "service").resolve():
        raise SystemExit(f"run on {tree} imported {got['service']}")
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact")
    ap.add_argument("--before", type=Path, default=Path("/work/wt-before"))
    ap.add_argument("--after", type=Path, default=ROOT)
    ap.add_argument("--backend", nargs="+", default=["onnx", "torch"],
                    help="onnx / torch: the default model; fake: the frame alone, on a step "
                         "model that computes nothing")
    ap.add_argument("--policy", default="none")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--n", type=int, default=320)
    ap.add_argument("--batch", type=int, default=16, help="engine max_batch_size")
    ap.add_argument("--threads", type=int, default=1, help="torch / onnx intra-op threads")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run = _child_fake if args.backend[0] == "fake" else _child
        print(json.dumps(asyncio.run(run(args))), flush=True)
        return 0
    trees = {"before": args.before, "after": args.after}
    runs: dict[str, list[dict[str, Any]]] = {f"{t} {b}": [] for b in args.backend for t in trees}
    for i in range(args.rounds):
        order = list(trees) if i % 2 == 0 else list(trees)[::-1]
        for backend in args.backend:
            for name in order:
                r = _run(trees[name], backend, args)
                runs[f"{name} {backend}"].append(r)
                print(f"round {i + 1} {name:6s} {backend:5s} {r['req_s']:7.1f} req/s  "
                      f"cpu {r['cpu_ms_per_req']:5.2f} ms/req  p50 {r['p50_ms']:6.1f} ms  "
                      f"p99 {r['p99_ms']:6.1f} ms", flush=True)
    med = {k: {m: round(statistics.median(r[m] for r in rs), 2)
               for m in ("req_s", "cpu_ms_per_req", "p50_ms", "p99_ms", "mean_exit")}
           for k, rs in runs.items()}
    print("\nmedians over rounds:")
    for backend in args.backend:
        b, a = med[f"before {backend}"], med[f"after {backend}"]
        print(f"{backend:5s} before {b['req_s']:7.1f} req/s cpu {b['cpu_ms_per_req']:5.2f} "
              f"ms/req p50 {b['p50_ms']:6.1f} p99 {b['p99_ms']:6.1f} | after {a['req_s']:7.1f} "
              f"req/s cpu {a['cpu_ms_per_req']:5.2f} ms/req p50 {a['p50_ms']:6.1f} p99 "
              f"{a['p99_ms']:6.1f} | after/before req/s x{a['req_s'] / b['req_s']:.3f}, "
              f"cpu x{a['cpu_ms_per_req'] / b['cpu_ms_per_req']:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "args": {k: str(v) for k, v in vars(args).items()},
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} vCPU",
            "medians": med, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
