"""Serving latency while a model trains beside it: where a first start's build should run.

Conditions: the build in a subprocess at nice 10 (what `eeserve serve` does for a missing
default model), in a subprocess at normal priority, in a thread of the serving process, and no
build. The engine serves ARTIFACT in-process (the code path of `eeserve serve`, no HTTP); one
text per request, sequential, `policy=none`. The "build" is the default recipe's kind of work: a
MiniLM-shaped encoder (6 layers, hidden 384, random init) trained on batches of 32 x 64 tokens
with the recipe's loss; latencies count only once its training steps run (its progress file
says so), for --window seconds. Conditions are interleaved round by round.

    eeserve train tiny-text --out artifacts/tiny-text --quiet
    python -m bench.reliability.build_while_serving artifacts/tiny-text --rounds 3 --window 20 \\
        --json docs/figures/build_while_serving.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.harness import ROOT, record

if TYPE_CHECKING:
    from service.engine import InProcessEngine

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""
TEXTS = ["a gorgeous, witty, seductive movie.", "the plot is nothing but boilerplate",
         "it's a film, with actors in it.", "not as bad as i feared, but not good either"]
MODULE = "bench.reliability.build_while_serving"  # `--train-for`: the subprocess builds' work
CONDITIONS = ("none", "subprocess-nice10", "subprocess-nice0", "thread")


def train_for(seconds: float, pfile: Path | None = None,
              stop: threading.Event | None = None) -> None:
    """The build's work: train a MiniLM-shaped multi-exit encoder (6 layers, hidden 384, random
    init) on random batches of 32 x 64 tokens with the recipe's loss, for `seconds`."""
    import torch

    from models import progress
    from models.build.tiny import tiny_backbone_config, tiny_tokenizer
    from models.build.training import depth_weighted_loss
    from models.text_classifier import MultiExitTextClassifier, TextClassifierConfig

    if pfile is not None:
        progress.configure(pfile)
    tok = tiny_tokenizer()
    model = MultiExitTextClassifier.from_config(
        tiny_backbone_config("bert", layers=6, vocab_size=len(tok), hidden=384), tok,
        TextClassifierConfig(num_labels=2, max_length=64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    model.train()
    end, step = time.monotonic() + seconds, 0
    while time.monotonic() < end and not (stop is not None and stop.is_set()):
        ids = torch.randint(5, len(tok), (32, 64), generator=gen)  # (B, T)
        y = torch.randint(0, 2, (32,), generator=gen)  # (B,)
        loss = depth_weighted_loss(model(ids, torch.ones_like(ids)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        progress.step("training", step, 10**6)
    progress.stage("done")


def start_build(cond: str, pfile: Path, seconds: float, stop: threading.Event) -> Any:
    if cond.startswith("subprocess"):
        nice = ["nice", "-n", "10"] if cond.endswith("nice10") else []
        return subprocess.Popen([*nice, sys.executable, "-m", MODULE, "--train-for",
                                 str(seconds), "--progress", str(pfile)], cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t = threading.Thread(target=train_for, args=(seconds, pfile, stop), daemon=True)
    t.start()
    return t


def alive(b: Any) -> bool:
    return b.poll() is None if isinstance(b, subprocess.Popen) else bool(b.is_alive())


def training(pfile: Path) -> bool:
    from models import progress

    p = progress.read(pfile)
    return p is not None and p.stage == "training"


async def one_condition(engine: InProcessEngine, cond: str, window_s: float,
                        tmp: Path) -> list[float]:
    from models import progress
    from service.protocol import ClassifyRequest

    pfile = tmp / f"{cond}.progress.json"
    pfile.unlink(missing_ok=True)
    stop = threading.Event()
    build = None if cond == "none" else start_build(cond, pfile, window_s + 60, stop)
    if build is not None:  # wait until the training steps run
        end = time.monotonic() + 300
        while not training(pfile) and alive(build) and time.monotonic() < end:
            await asyncio.sleep(0.2)
    lat: list[float] = []
    start, checked, busy, i = time.monotonic(), 0.0, True, 0
    while time.monotonic() - start < window_s and busy:
        t0 = time.perf_counter()
        await engine.classify(ClassifyRequest(texts=[TEXTS[i % len(TEXTS)]], policy="none"))
        lat.append((time.perf_counter() - t0) * 1e3)
        i += 1
        if build is not None and time.monotonic() - checked > 0.25:
            checked, busy = time.monotonic(), training(pfile)
    if isinstance(build, subprocess.Popen):
        build.terminate()
        build.wait(30)
    elif build is not None:
        stop.set()
        await asyncio.to_thread(build.join)
        progress.configure(None)
    return lat[1:]  # the first request after a change of condition is left out


async def run(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(results, the engine's runtime settings)."""
    import torch

    from service.engine import EngineConfig, InProcessEngine

    engine = InProcessEngine(EngineConfig(models=(args.artifact,), device="cpu",
                                          max_queue_delay_ms=0.0))
    await engine.start()
    details = engine.models()[0].details
    runtime = {"backend": details.get("backend"), "precision": details.get("precision"),
               "torch_threads": torch.get_num_threads()}
    samples: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = CONDITIONS[r % len(CONDITIONS):] + CONDITIONS[:r % len(CONDITIONS)]
            for cond in order:
                lat = await one_condition(engine, cond, args.window, Path(tmp))
                samples[cond].extend(lat)
                print(f"round {r + 1} {cond}: {len(lat)} requests, median "
                      f"{statistics.median(lat):.2f} ms", flush=True)
    await engine.shutdown(5)
    results = {"artifact": args.artifact, "rounds": args.rounds, "window_s": args.window,
               "build_workload": "MiniLM-shaped 6x384 encoder, batch 32 x 64 tokens, AdamW",
               "results": {c: {"n": len(v), "median_ms": round(statistics.median(v), 3),
                               "p90_ms": round(statistics.quantiles(v, n=10)[-1], 3),
                               "p99_ms": round(statistics.quantiles(v, n=100)[-1], 3)}
                           for c, v in samples.items() if len(v) >= 2}}
    return results, runtime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reliability.build_while_serving",
                                description=DESCRIPTION)
    p.add_argument("artifact", nargs="?")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--window", type=float, default=15.0, help="seconds measured per condition")
    p.add_argument("--json", type=Path, help="write the run's record here")
    p.add_argument("--train-for", type=float, help=argparse.SUPPRESS)  # the subprocess's work
    p.add_argument("--progress", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.train_for is not None:
        train_for(args.train_for, args.progress)
        return 0
    if not args.artifact:
        p.error("give the artifact to serve")
    out, runtime = asyncio.run(run(args))
    print(json.dumps(out["results"], indent=1))
    record("reliability.build_while_serving", args.json, out, **runtime, device="cpu")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
