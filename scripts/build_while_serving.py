#!/usr/bin/env python
"""Serving latency while a model trains beside it: in a subprocess (what `eeserve serve` does for
a missing default model, at nice 10), in a subprocess at normal priority, in a thread of the
serving process, and with no build. Decides where a first start's build runs.

The engine serves ARTIFACT (the code path of `eeserve serve`); one text per request, sequential.
Each build trains the tiny-text recipe for --epochs epochs; latencies count only while its
progress file says it is in its training steps, so every condition measures the same phase.
Conditions are interleaved round by round.

    python scripts/build_while_serving.py ARTIFACT --rounds 3 --epochs 40 \
        --json docs/figures/build_while_serving.json
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
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import progress  # noqa: E402
from service.engine import EngineConfig, InProcessEngine  # noqa: E402
from service.protocol import ClassifyRequest  # noqa: E402

TEXTS = ["a gorgeous, witty, seductive movie.", "the plot is nothing but boilerplate",
         "it's a film, with actors in it.", "not as bad as i feared, but not good either"]
CONDITIONS = ("none", "subprocess-nice10", "subprocess-nice0", "thread")


def start_build(cond: str, out: Path, pfile: Path, epochs: int) -> Any:
    if cond.startswith("subprocess"):
        nice = ["nice", "-n", "10"] if cond.endswith("nice10") else []
        return subprocess.Popen([*nice, sys.executable, "-m", "service", "train", "tiny-text",
                                 "--out", str(out), "--epochs", str(epochs), "--quiet"],
                                cwd=ROOT, env={**os.environ, progress.ENV: str(pfile),
                                               "PYTHONPATH": str(ROOT)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from models.recipes import BuildOptions, build

    progress.configure(pfile)
    t = threading.Thread(target=build, args=("tiny-text", BuildOptions(
        out=out, device="cpu", progress=False, epochs=epochs)), daemon=True)
    t.start()
    return t


def alive(b: Any) -> bool:
    return b.poll() is None if isinstance(b, subprocess.Popen) else bool(b.is_alive())


def training(pfile: Path) -> bool:
    p = progress.read(pfile)
    return p is not None and p.stage == "training" and (p.step or 0) < (p.total or 1)


async def one_condition(engine: InProcessEngine, cond: str, epochs: int, window_s: float,
                        tmp: Path) -> list[float]:
    pfile = tmp / f"{cond}.progress.json"
    pfile.unlink(missing_ok=True)
    build = None if cond == "none" else start_build(cond, tmp / cond, pfile, epochs)
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
        await asyncio.to_thread(build.join)  # a thread cannot be stopped: let it finish
        progress.configure(None)
    return lat


async def run(args: argparse.Namespace) -> dict[str, Any]:
    engine = InProcessEngine(EngineConfig(models=(args.artifact,), device="cpu",
                                          max_queue_delay_ms=0.0))
    await engine.start()
    samples: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = CONDITIONS[r % len(CONDITIONS):] + CONDITIONS[:r % len(CONDITIONS)]
            for cond in order:
                lat = await one_condition(engine, cond, args.epochs, args.window, Path(tmp))
                samples[cond].extend(lat)
                print(f"round {r + 1} {cond}: {len(lat)} requests, median "
                      f"{statistics.median(lat):.2f} ms", flush=True)
    await engine.shutdown(5)
    return {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "platform": platform.platform(), "artifact": args.artifact,
            "epochs": args.epochs, "rounds": args.rounds, "window_s": args.window,
            "results": {c: {"n": len(v), "median_ms": round(statistics.median(v), 3),
                            "p90_ms": round(statistics.quantiles(v, n=10)[-1], 3),
                            "p99_ms": round(statistics.quantiles(v, n=100)[-1], 3)}
                        for c, v in samples.items() if len(v) >= 2}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifact")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--window", type=float, default=15.0, help="seconds measured per condition")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    out = asyncio.run(run(args))
    print(json.dumps(out["results"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
