"""Model time per request on each backend, with and without early exit, beside the ONNX peer.

Runs real test sentences (the artifact's eval_texts.jsonl) through the exit loop exactly as the
engine does (embed; per layer: step or advance, policy step, last-exit rule, filter the rows that
left), pre-tokenised, on one thread of the caller (no HTTP, no queue). Configurations are
interleaved request by request; per configuration the mean and median time per request, the
mean exit layer, and for the loop the share of time spent outside the runtime call (policy step,
filter, bookkeeping). The whole-model ONNX graph (what `python -m bench.peers.onnx --runtime
onnx` serves) runs beside it.

    OMP_WAIT_POLICY=PASSIVE python -m bench.model_time artifacts/text-default \\
        --threads 1 2 --batch 1 8 --n 200 --precision fp32 int8 --policy beem \\
        --json docs/figures/backend_model_time.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.harness import record

if TYPE_CHECKING:
    from models.base import Encoded
    from models.loading import LoadedModel

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""
PEER = "onnx peer (whole graph)"
WARMUP = 10  # calls per configuration before the timed ones


@dataclass
class Clock:
    """Where the loop's time goes: the runtime call vs everything else."""

    runtime: float = 0.0
    other: float = 0.0
    exits: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Config:
    """One measured configuration: a loaded model run with one policy."""

    name: str
    backend: str
    precision: str
    policy: str

    def settings(self, threads: int) -> dict[str, Any]:
        return {"name": self.name, "backend": self.backend, "precision": self.precision,
                "policy": self.policy, "threads": threads}


def exit_loop(model: Any, policy: Any, enc: Encoded, clock: Clock) -> None:
    """The engine's loop for one cohort (see service/engine/cohort.py), with its one-call path
    for rows that cannot exit early (service/engine/one_call.py)."""
    from policies import enforce_last_exit

    t = time.perf_counter()
    if policy.first_exit() >= model.num_exits and getattr(model, "has_whole", False):
        model.run_whole(enc)  # as the engine does: no early exit possible, one call
        clock.runtime += time.perf_counter() - t
        clock.exits += [model.num_exits] * len(enc.lengths)
        return
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
        if any(gone):
            batch, state = out.batch.filter(keep), d.state.filter(keep)
        else:
            batch, state = out.batch, d.state
        clock.other += time.perf_counter() - t1


def loop_runner(model: Any, policy: Any) -> Callable[[Encoded, Clock], None]:
    """One call of the exit loop with `policy` on `model`."""
    def run(enc: Encoded, clock: Clock) -> None:
        exit_loop(model, policy, enc, clock)
    return run


def peer_runner(session: Any) -> Callable[[Encoded], None]:
    """One call of the whole-model graph on a pre-tokenised batch."""
    def run(enc: Encoded) -> None:
        session.run(None, {"input_ids": enc.input_ids.numpy(),
                           "mask": enc.attention_mask.numpy()})
    return run


def measure(models: dict[str, LoadedModel], peer: Any, texts: list[str], b: int, n: int,
            policy_name: str) -> tuple[dict[str, Any], list[Config]]:
    """`models`: name -> LoadedModel (its manifest holds the policies calibrated for it). Each
    model runs with `none` and `policy_name`, and the peer beside them; `n` timed calls of `b`
    texts each (after `WARMUP`), configurations interleaved, order reversed every other call."""
    import numpy as np
    import torch

    from policies import build_policy

    any_model = next(iter(models.values())).model
    groups = [texts[(i * b) % len(texts):(i * b) % len(texts) + b] for i in range(n + WARMUP)]
    groups = [g for g in groups if len(g) == b]
    encs = [any_model.encode(g) for g in groups]
    runs: dict[str, Callable[[Encoded, Clock], None]] = {}
    configs: list[Config] = []
    for name, loaded in models.items():
        m = loaded.model
        backend, precision = name.split(" ", 1)
        for p in ("none", policy_name):
            cal = (loaded.manifest.get("policies") or {}).get(p)
            pol = build_policy(p, m.num_exits, None, cal)
            runs[f"{name} {p}"] = loop_runner(m, pol)
            configs.append(Config(f"{name} {p}", backend, precision, p))
    prun = peer_runner(peer)
    runs[PEER] = lambda enc, c: prun(enc)
    configs.append(Config(PEER, "onnx peer", "fp32", "none"))
    times: dict[str, list[float]] = {k: [] for k in runs}
    clocks = {k: Clock() for k in runs}
    order = list(runs)
    with torch.inference_mode():
        for i, enc in enumerate(encs):
            for name in order if i % 2 == 0 else order[::-1]:
                c = Clock() if i < WARMUP else clocks[name]
                t = time.perf_counter()
                runs[name](enc, c)
                if i >= WARMUP:
                    times[name].append((time.perf_counter() - t) * 1e3)
    peer_mean = statistics.mean(times[PEER])
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
    return out, configs


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.model_time", description=DESCRIPTION)
    ap.add_argument("artifact", type=Path, help="text artifact directory")
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2],
                    help="intra-op threads, one run of every configuration per value")
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8], help="texts per call")
    ap.add_argument("--n", type=int, default=300, help="timed calls per configuration")
    ap.add_argument("--policy", default="beem", help="the early-exit policy beside `none`")
    ap.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "int8"],
                    help="onnx precisions (torch runs fp32)")
    ap.add_argument("--json", type=Path, help="write the run's record here")
    return ap


def first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def _refuse(message: str) -> int:
    print(f"bench.model_time: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.artifact / "manifest.json").is_file():
        return _refuse(f"{args.artifact}: not an artifact directory (no manifest.json)")
    for flag, values in (("--threads", args.threads), ("--batch", args.batch),
                         ("--n", [args.n])):
        if min(values) < 1:
            return _refuse(f"{flag} must be >= 1, got {min(values)}")
    import onnxruntime as ort
    import torch

    from bench.peers.onnx import ensure_whole_graph
    from models.artifact import ArtifactError, read_manifest
    from models.build.eval_texts import load_eval_texts
    from models.loading import BackendChoice, load_text_artifact
    from models.onnx_backend import OrtOptions, session_options

    try:
        manifest = read_manifest(args.artifact, verify=False)
        texts = load_eval_texts(args.artifact, manifest).split("test")[0]
        peer_path = ensure_whole_graph(args.artifact)
    except ArtifactError as e:
        return _refuse(first_line(e))
    results: dict[str, Any] = {}
    configurations: list[dict[str, Any]] = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        try:
            models = {"torch fp32": load_text_artifact(args.artifact, backend="torch")}
            for p in args.precision:
                models[f"onnx {p}"] = load_text_artifact(
                    args.artifact, backend=BackendChoice("onnx", p, onnx_threads=threads))
        except ArtifactError as e:
            return _refuse(first_line(e))
        peer = ort.InferenceSession(str(peer_path), session_options(OrtOptions(threads)),
                                    providers=["CPUExecutionProvider"])
        for b in args.batch:
            res, configs = measure(models, peer, texts, b, args.n, args.policy)
            results[f"threads={threads} batch={b}"] = res
            if b == args.batch[0]:
                configurations += [c.settings(threads) for c in configs]
            print(f"threads {threads}, batch {b}:", flush=True)
            for name, d in res.items():
                print(f"  {name:24s} {d['mean_ms']:7.2f} ms mean  {d['p50_ms']:7.2f} p50  "
                      f"exit {d.get('mean_exit', '-')}  x{d['vs_peer']:.2f} vs peer  "
                      f"outside runtime {d.get('overhead_share', 0):.1%}", flush=True)
    record("model_time", args.json, results, artifact=str(args.artifact),
           backend=sorted({c["backend"] for c in configurations}),
           precision=["fp32", *[p for p in args.precision if p != "fp32"]],
           threads=args.threads, batch=args.batch, n=args.n, policy=args.policy,
           configurations=configurations)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
