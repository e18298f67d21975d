"""The serving engine alone, in-process: early exit's speed-up, closed-loop throughput, checkouts.

No HTTP: the engine is driven the way the app drives it.

- `speedup`: test-split sentences through the real engine (the code path `eeserve serve` uses),
  the policies interleaved request by request so drift hits both alike; per policy the mean exit
  layer, the layer speed-up (K / mean exit), mean and median engine compute time and client-side
  latency per request, the measured speed-up over the first policy, and measured / layer
  speed-up. Batch 1 = one text per request, sequential; batch B = one request of B texts.
- `throughput`: `--clients` concurrent single-text requests over the test split, per policy,
  interleaved runs (`--repeats`); req/s, p50/p99, rows per engine step, ms per layer-row.
  Separates what early exit saves in the engine from what the HTTP stack and the client cost.
- `checkouts`: the closed loop of `throughput` (one policy) on two code trees in alternating
  child processes, several rounds, order reversed every other round; each child imports one
  tree, so "before" runs the old engine and "after" the new one on the same model and settings.
  Medians per (tree, backend) of req/s, p50/p99 and CPU time per request (process time of all
  the engine's threads: less sensitive than wall time to other jobs on shared cores).
  `--tiny` builds the tiny-text recipe and runs it in place of ARTIFACT: the frame with almost
  no model compute (it replaces the old `--backend fake` step model; not the same figure).

    python -m bench.engine speedup artifacts/text-default --policy none beem eenet maxprob \
        --batch 1 8 --n 300 --json docs/figures/engine_speedup_cpu.json
    python -m bench.engine throughput artifacts/text-default --policy none beem eenet maxprob \
        --clients 16 --n 400 --repeats 3 --json docs/figures/engine_throughput_cpu.json
    git -C /work/main worktree add --detach /work/wt-before f6bf745
    python -m bench.engine checkouts artifacts/text-default --before /work/wt-before \
        --after . --backend onnx torch --policy eenet --rounds 5 --n 320 \
        --json docs/figures/engine_frame_bench.json
    python -m bench.engine checkouts --tiny --before /work/wt-before --after . \
        --backend onnx --n 4000 --rounds 7 --json docs/figures/engine_frame_tiny.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import _checkouts
from bench.harness import ROOT, record

if TYPE_CHECKING:
    from service.engine import EngineConfig, InProcessEngine
    from service.stats import IterationStats

CHILD = Path(__file__).resolve().with_name("_engine_child.py")
BACKENDS = ("torch", "onnx", "auto")
DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""


# ---- shared ---------------------------------------------------------------------------------
def _config(args: argparse.Namespace, batch: int, **kw: Any) -> EngineConfig:
    """The engine's settings of a run: the flags, else `Settings`' defaults."""
    from service.engine import EngineConfig

    threads = {"torch_threads": args.threads, "onnx_threads": args.threads} if args.threads \
        else {}
    return EngineConfig(models=(str(args.artifact),), device=args.device, backend=args.backend,
                        precision=args.precision, max_batch_size=batch, queue_limit=10_000,
                        **threads, **kw)


def _runtime(engine: InProcessEngine, cfg: EngineConfig) -> dict[str, Any]:
    """What the engine ran: backend, precision and intra-op threads of its (first) model."""
    import torch

    details = engine.models()[0].details
    backend = details.get("backend")
    return {"backend": backend, "precision": details.get("precision") or cfg.dtype,
            "threads": cfg.onnx_threads if backend == "onnx" else torch.get_num_threads()}


def _texts() -> list[str]:
    from models.build.data import load_movie_reviews

    return list(load_movie_reviews().test.texts)


def _engine_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", type=Path)
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="text models' layer runtime (default torch: what these figures ran on)")
    p.add_argument("--precision", choices=["fp32", "int8"], default="fp32", help="onnx only")
    p.add_argument("--threads", type=int, default=None,
                   help="torch / onnx intra-op threads (default: torch's own; onnx 1)")
    p.add_argument("--json", type=Path, help="write the run's record here")


# ---- speedup --------------------------------------------------------------------------------
async def measure_speedup(args: argparse.Namespace, batch: int) -> tuple[dict[str, Any],
                                                                          dict[str, Any]]:
    """One batch size: the policies interleaved request by request; (summary, runtime)."""
    from service.engine import InProcessEngine
    from service.protocol import ClassifyRequest

    cfg = _config(args, batch, max_queue_delay_ms=0.0)
    engine = InProcessEngine(cfg)
    await engine.start()
    runtime = _runtime(engine, cfg)
    texts = _texts()
    policies: list[str] = args.policy
    groups = [texts[(i * batch) % len(texts):(i * batch) % len(texts) + batch]
              for i in range(args.n + args.warmup)]
    groups = [g for g in groups if len(g) == batch]
    rows: dict[str, dict[str, list[float]]] = {p: {"compute": [], "client": [], "exit": []}
                                               for p in policies}
    for i, g in enumerate(groups):
        for p in policies if i % 2 == 0 else policies[::-1]:
            t0 = time.perf_counter()
            res = await engine.classify(ClassifyRequest(texts=g, policy=p))
            client = (time.perf_counter() - t0) * 1e3
            if i < args.warmup:
                continue
            rows[p]["compute"].append(max(r.compute_ms for r in res))
            rows[p]["client"].append(client)
            rows[p]["exit"].extend(r.exit_layer for r in res)
    k = next(iter(engine.served.values())).num_exits
    await engine.shutdown(5)
    return summarise_speedup(rows, k, policies[0]), runtime


def summarise_speedup(rows: dict[str, dict[str, list[float]]], k: int,
                      base: str) -> dict[str, Any]:
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


def run_speedup(args: argparse.Namespace) -> int:
    from models.artifact import read_manifest

    man = read_manifest(args.artifact, verify=False)
    report: dict[str, Any] = {
        "artifact": str(args.artifact), "model": man.get("name"), "device": args.device,
        "policies": {p: (man.get("policies") or {}).get(p, {}).get("params")
                     for p in args.policy},
        "results": {}}
    runtime: dict[str, Any] = {}
    for b in args.batch:
        res, runtime = asyncio.run(measure_speedup(args, b))
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
    record("engine.speedup", args.json, report, **runtime, device=args.device,
           batch=args.batch, n=args.n, warmup=args.warmup)
    return 0


# ---- throughput -----------------------------------------------------------------------------
async def throughput_once(args: argparse.Namespace, policy: str) -> tuple[dict[str, Any],
                                                                           dict[str, Any]]:
    """One closed-loop run of one policy on a fresh engine; (figures, runtime)."""
    from service.engine import InProcessEngine
    from service.protocol import ClassifyRequest
    from service.stats import NullSink

    class StepSink(NullSink):
        def __init__(self) -> None:
            self.steps: list[IterationStats] = []

        def record_iteration(self, s: IterationStats) -> None:
            self.steps.append(s)

    sink = StepSink()
    cfg = _config(args, args.batch, catch_up_rounds=args.catch_up_rounds)
    engine = InProcessEngine(cfg, sink)
    await engine.start()
    runtime = _runtime(engine, cfg)
    k = next(iter(engine.served.values())).num_exits
    texts = _texts()
    for i in range(2):  # warm-up
        await engine.classify(ClassifyRequest(texts=texts[i * 16:(i + 1) * 16], policy=policy))
    sink.steps.clear()
    nxt, lat, exits = 0, [], []

    async def client() -> None:
        nonlocal nxt
        while nxt < args.n:
            t = texts[nxt % len(texts)]
            nxt += 1
            t0 = time.perf_counter()
            res = await engine.classify(ClassifyRequest(texts=[t], policy=policy))
            lat.append((time.perf_counter() - t0) * 1e3)
            exits.append(res[0].exit_layer)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(args.clients)))
    wall = time.perf_counter() - t0
    await engine.shutdown(5)
    rows = sum(s.batch_size for s in sink.steps)
    return {"req_s": args.n / wall, "p50_ms": statistics.median(lat),
            "p99_ms": statistics.quantiles(lat, n=100)[98], "mean_exit": statistics.mean(exits),
            "mean_step_rows": rows / max(1, len(sink.steps)),
            "ms_per_layer_row": sum(s.seconds for s in sink.steps) / max(1, rows) * 1e3,
            "num_exits": k}, runtime


def run_throughput(args: argparse.Namespace) -> int:
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in args.policy}
    runtime: dict[str, Any] = {}
    for _ in range(args.repeats):
        for p in args.policy:
            got, runtime = asyncio.run(throughput_once(args, p))
            runs[p].append(got)
    base = statistics.median(r["req_s"] for r in runs[args.policy[0]])
    out = {}
    for p, rs in runs.items():
        med = {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0]}
        med["speedup"] = round(med["req_s"] / base, 3)
        med["layer_speedup"] = (round(med["num_exits"] / med["mean_exit"], 3)
                                if med["mean_exit"] else None)
        out[p] = med
        print(f"{p:8s} {med['req_s']:7.1f} req/s (x{med['speedup']:.2f}; layer x"
              f"{med['layer_speedup'] or 0:.2f})  p50 {med['p50_ms']:.1f} ms  p99 "
              f"{med['p99_ms']:.1f} ms  rows/step {med['mean_step_rows']:.1f}  ms/layer-row "
              f"{med['ms_per_layer_row']:.3f}", flush=True)
    record("engine.throughput", args.json, {"median_of_repeats": out, "runs": runs}, **runtime,
           device=args.device, clients=args.clients, batch=args.batch, n=args.n,
           repeats=args.repeats, catch_up_rounds=args.catch_up_rounds)
    return 0


# ---- checkouts ------------------------------------------------------------------------------
def child_run(tree: Path, artifact: Path, backend: str, args: argparse.Namespace) -> dict[str, Any]:
    """One closed-loop run in a fresh `python` importing `tree`'s code."""
    cmd = [sys.executable, "-P", str(CHILD), str(artifact.resolve()), "--backend", backend,
           "--policy", args.policy, "--clients", str(args.clients), "--n", str(args.n),
           "--batch", str(args.batch), "--threads", str(args.threads)]
    out = subprocess.run(cmd, env=_checkouts.env(tree), cwd=tree, capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"run on {tree} ({backend}) failed: {out.stderr[-2000:]}")
    got: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if not _checkouts.imported_from(tree, got["service"]):
        raise SystemExit(f"run on {tree} imported {got['service']}")
    return got


def run_checkouts(args: argparse.Namespace) -> int:
    if args.tiny:
        with tempfile.TemporaryDirectory(prefix="bench-engine-tiny-") as tmp:
            from models.build.recipes import BuildOptions, build

            print("building the tiny-text recipe ...", file=sys.stderr, flush=True)
            build("tiny-text", BuildOptions(out=Path(tmp) / "tiny-text", device="cpu",
                                            progress=False))
            return compare_checkouts(args, Path(tmp) / "tiny-text")
    if args.artifact is None:
        raise SystemExit("bench.engine checkouts: give ARTIFACT or --tiny")
    return compare_checkouts(args, args.artifact)


def compare_checkouts(args: argparse.Namespace, artifact: Path) -> int:
    trees = {"before": args.before, "after": args.after}
    runs: dict[str, list[dict[str, Any]]] = {f"{t} {b}": [] for b in args.backend for t in trees}
    for i in range(args.rounds):
        order = list(trees) if i % 2 == 0 else list(trees)[::-1]
        for backend in args.backend:
            for name in order:
                r = child_run(trees[name], artifact, backend, args)
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
    precisions = sorted({str(rs[0].get("precision")) for rs in runs.values() if rs})
    record("engine.checkouts", args.json, {"medians": med, "runs": runs},
           backend=args.backend,
           precision=precisions[0] if len(precisions) == 1 else precisions,
           threads=args.threads,
           artifact="tiny-text (built for this run)" if args.tiny else str(artifact),
           trees={n: {"path": str(t.resolve()), "commit": _checkouts.commit(t)}
                  for n, t in trees.items()},
           policy=args.policy, clients=args.clients, n=args.n, batch=args.batch,
           rounds=args.rounds)
    return 0


# ---- command line ---------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.engine", description=DESCRIPTION)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("speedup", help="policies interleaved request by request vs the first",
                       description="Measured vs layer speed-up of early exit over the first "
                                   "policy, per batch size.")
    _engine_flags(p)
    p.add_argument("--policy", nargs="+", default=["none", "beem"],
                   help="policies to compare; the first is the reference")
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--n", type=int, default=300, help="requests per policy and batch size")
    p.add_argument("--warmup", type=int, default=20)
    p.set_defaults(run=run_speedup)

    p = sub.add_parser("throughput", help="closed-loop clients in-process, per policy",
                       description="Closed-loop throughput of the engine alone, per policy, "
                                   "interleaved runs.")
    _engine_flags(p)
    p.add_argument("--policy", nargs="+", default=["none", "beem"])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--batch", type=int, default=16, help="engine max_batch_size")
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--catch-up-rounds", type=int, default=0, help="engine setting (0 = off)")
    p.set_defaults(run=run_throughput)

    p = sub.add_parser("checkouts", help="the closed loop on two code trees, rounds interleaved",
                       description="Before/after: the closed loop of `throughput` on two "
                                   "checkouts in alternating child processes.")
    p.add_argument("artifact", type=Path, nargs="?", help="the model (or --tiny)")
    p.add_argument("--tiny", action="store_true",
                   help="build the tiny-text recipe (seconds) and run it instead of ARTIFACT")
    p.add_argument("--before", type=Path, required=True, help="the old checkout")
    p.add_argument("--after", type=Path, default=ROOT, help="the new checkout (default: this)")
    p.add_argument("--backend", nargs="+", choices=["onnx", "torch"], default=["onnx", "torch"])
    p.add_argument("--policy", default="none")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--n", type=int, default=320)
    p.add_argument("--batch", type=int, default=16, help="engine max_batch_size")
    p.add_argument("--threads", type=int, default=1, help="torch / onnx intra-op threads")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path, help="write the run's record here")
    p.set_defaults(run=run_checkouts)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    rc: int = args.run(args)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
