#!/usr/bin/env python
"""Model time per request on each backend, with and without early exit, beside the ONNX peer.

Runs real test sentences (the artifact's eval_texts.jsonl) through the exit loop exactly as the
engine does (embed; per layer: step or advance, policy step, last-exit rule, filter the rows that
left), pre-tokenised, on one thread of the caller (no HTTP, no queue). Configurations are
interleaved request by request; per configuration the mean and median time per request, the
mean exit layer, and for the loop the share of time spent outside the runtime call (policy step,
filter, bookkeeping). The whole-model ONNX graph (what `eeserve peer --runtime onnx` serves)
runs beside it.

    OMP_WAIT_POLICY=PASSIVE python scripts/backend_model_time.py artifacts/text-default \
        --threads 1 2 --batch 1 8 --n 300 --json docs/figures/backend_model_time.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from models.base import Encoded  # noqa: E402
from models.build.eval_texts import load_eval_texts  # noqa: E402
from models.loading import BackendChoice, load_text_artifact  # noqa: E402
from policies import build_policy, enforce_last_exit  # noqa: E402


@dataclass
class Clock:
    """Where the loop's time goes: the runtime call vs everything else."""

    runtime: float = 0.0
    other: float = 0.0
    exits: list[int] = field(default_factory=list)


def exit_loop(model: Any, policy: Any, enc: Encoded, clock: Clock) -> None:
    """The engine's loop for one cohort (see service/engine/cohort.py)."""
    t = time.perf_counter()
    batch = model.embed(enc)
    t1 = time.perf_counter()
    clock.runtime += t1 - t
    state = policy.init_state(len(enc.lengths), model.device)
    k_max, first = model.num_exits, min(policy.first_exit(), model.num_exits)
    clock.other += time.perf_counter() - t1
    for k in range(1, k_max + 1):
        t = time.perf_counter()
        if k < first:
            batch = model.advance(batch, k)
            clock.runtime += time.perf_counter() - t
            continue
        out = model.step(batch, k)
        t1 = time.perf_counter()
        clock.runtime += t1 - t
        d = enforce_last_exit(policy.step(state, k, out.logits), k, k_max)
        gone = d.exit_mask.tolist()
        clock.exits += [k] * sum(gone)
        if all(gone):
            clock.other += time.perf_counter() - t1
            return
        keep = ~d.exit_mask
        batch, state = (out.batch.filter(keep), d.state.filter(keep)) if any(gone) else (
            out.batch, d.state)
        clock.other += time.perf_counter() - t1


def peer_runner(session: Any) -> Callable[[Encoded], None]:
    def run(enc: Encoded) -> None:
        session.run(None, {"input_ids": enc.input_ids.numpy(),
                           "mask": enc.attention_mask.numpy()})
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--n", type=int, default=300, help="requests per configuration")
    ap.add_argument("--policy", default="beem", help="the early-exit policy beside `none`")
    ap.add_argument("--precision", nargs="+", default=["fp32"], help="onnx precisions")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import onnxruntime as ort

    from models.onnx_backend import OrtOptions, session_options
    from tools.peer_onnx import ensure_whole_graph

    texts = load_eval_texts(args.artifact, {}).split("test")[0]
    report: dict[str, Any] = {"artifact": str(args.artifact), "machine": platform.platform(),
                              "processor": _cpu(), "torch": torch.__version__,
                              "onnxruntime": ort.__version__, "policy": args.policy,
                              "results": {}}
    peer_path = ensure_whole_graph(args.artifact)
    for threads in args.threads:
        torch.set_num_threads(threads)
        models = {"torch fp32": load_text_artifact(args.artifact, backend="torch")}
        for p in args.precision:
            models[f"onnx {p}"] = load_text_artifact(
                args.artifact, backend=BackendChoice("onnx", p, onnx_threads=threads))
        peer = ort.InferenceSession(str(peer_path), session_options(OrtOptions(threads)),
                                    providers=["CPUExecutionProvider"])
        for b in args.batch:
            res = measure(models, peer, texts, b, args.n, args.policy)
            report["results"][f"threads={threads} batch={b}"] = res
            print(f"threads {threads}, batch {b}:", flush=True)
            for name, d in res.items():
                print(f"  {name:24s} {d['mean_ms']:7.2f} ms mean  {d['p50_ms']:7.2f} p50  "
                      f"exit {d.get('mean_exit', '-')}  x{d['vs_peer']:.2f} vs peer  "
                      f"outside runtime {d.get('overhead_share', 0):.1%}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def measure(models: dict[str, Any], peer: Any, texts: list[str], b: int, n: int,
            policy_name: str) -> dict[str, Any]:
    """`models`: name -> LoadedModel (its manifest holds the policies calibrated for it)."""
    any_model = next(iter(models.values())).model
    groups = [texts[(i * b) % len(texts):(i * b) % len(texts) + b] for i in range(n + 10)]
    groups = [g for g in groups if len(g) == b]
    encs = [any_model.encode(g) for g in groups]
    runs: dict[str, Callable[[Encoded, Clock], None]] = {}
    for name, loaded in models.items():
        m = loaded.model
        for p in ("none", policy_name):
            cal = (loaded.manifest.get("policies") or {}).get(p)
            pol = build_policy(p, m.num_exits, None, cal)
            runs[f"{name} {p}"] = (lambda enc, c, m=m, pol=pol: exit_loop(m, pol, enc, c))
    prun = peer_runner(peer)
    runs["onnx peer (whole graph)"] = lambda enc, c: prun(enc)
    times: dict[str, list[float]] = {k: [] for k in runs}
    clocks = {k: Clock() for k in runs}
    order = list(runs)
    with torch.inference_mode():
        for i, enc in enumerate(encs):
            for name in order if i % 2 == 0 else order[::-1]:
                c = Clock() if i < 10 else clocks[name]
                t = time.perf_counter()
                runs[name](enc, c)
                if i >= 10:
                    times[name].append((time.perf_counter() - t) * 1e3)
    peer_mean = statistics.mean(times["onnx peer (whole graph)"])
    out = {}
    for name, ts in times.items():
        d: dict[str, Any] = {"mean_ms": round(statistics.mean(ts), 3),
                             "p50_ms": round(statistics.median(ts), 3),
                             "vs_peer": round(peer_mean / statistics.mean(ts), 3),
                             "requests": len(ts)}
        c = clocks[name]
        if c.exits:
            d["mean_exit"] = round(float(np.mean(c.exits)), 3)
            d["overhead_share"] = round(c.other / (c.runtime + c.other), 4)
        out[name] = d
    return out


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    raise SystemExit(main())
